"""What scalequest sends to the Hugging Face Hub and knows of it, for every stage that pushes (export, the
training stages): the token check, one folder upload, and the licenses of the models and data the recipes use.

The token is never a config field: huggingface_hub reads it from the environment (HF_TOKEN) or from the
login `hf auth login` stored, and scalequest neither reads it further nor logs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from scalequest.config import BUNDLED_DATA, ConfigError
from scalequest.models import EMBEDDED, EMBEDDED_HUB_ID

log = logging.getLogger(__name__)

# Licenses of the models and data the paper's recipe and the demo use, as their Hub cards state them
# ((Hub license id, name for "other")). A model or dataset not listed here is looked up in the local Hub cache
# (its README's `license`), never online; otherwise its license is unknown.
KNOWN_LICENSES: dict[str, tuple[str, str | None]] = {
    EMBEDDED_HUB_ID: ("apache-2.0", None),
    "Qwen/Qwen2-Math-7B-Instruct": ("apache-2.0", None),
    "Qwen/Qwen2-Math-7B": ("apache-2.0", None),
    "Qwen/Qwen2-Math-1.5B-Instruct": ("apache-2.0", None),
    "Qwen/Qwen2.5-Math-7B-Instruct": ("apache-2.0", None),
    "deepseek-ai/deepseek-math-7b-rl": ("other", "DeepSeek License"),
    "deepseek-ai/deepseek-math-7b-base": ("other", "DeepSeek License"),
    "deepseek-ai/deepseek-math-7b-instruct": ("other", "DeepSeek License"),
    "internlm/internlm2-7b-reward": ("other", "InternLM license"),
    "gpt-4o-mini": ("other", "OpenAI terms of use"),
    "openai/gsm8k": ("mit", None),
    "DigitalLearningGmbH/MATH-lighteval": ("mit", None),
    "HuggingFaceH4/MATH-500": ("mit", None),
    # The data bundled with scalequest is its own, written by scripts/ (src/scalequest/data/README.md).
    **{f"scalequest/{name}": ("apache-2.0", None) for name in BUNDLED_DATA},
}


def card_license(card: Path) -> tuple[str, str | None] | None:
    """(license, license_name) from the YAML metadata of a model or dataset card (README.md), if it has one."""
    try:
        from huggingface_hub import metadata_load

        metadata = metadata_load(card) or {}
    except Exception:  # noqa: BLE001 - a card without readable metadata: not known
        return None
    value = metadata.get("license")
    if not value:
        return None
    name = metadata.get("license_name")
    return (", ".join(value) if isinstance(value, list) else str(value)), (str(name) if name else None)


def license_of(name: str, repo_type: str, revision: str | None = None) -> tuple[str, str | None]:
    """(Hub license id or "unknown", name of an "other" license) of a model or dataset: from its card when a
    local folder has one or the local Hub cache holds it (never online), else from KNOWN_LICENSES."""
    path = Path(name).expanduser()
    try:
        card = path / "README.md" if path.is_dir() else None
    except OSError:  # a name that is no path at all
        card = None
    if card is None and "/" in name and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "README.md", revision=revision, repo_type=repo_type)
        except Exception:  # noqa: BLE001 - not a valid repo id, or an unreadable cache
            cached = None
        card = Path(cached) if isinstance(cached, str) else None
    found = card_license(card) if card is not None and card.is_file() else None
    return found or KNOWN_LICENSES.get(name, ("unknown", None))


def base_model(name: str, revision: str | None = None) -> tuple[str, str | None, bool, str]:
    """(name, revision, on the Hub, original model) of the model a training started from. 'embedded' is its Hub id;
    an earlier training stage's output folder (qpo trains qft's model) is named by the Hub repo it was pushed to,
    else followed back through its manifest to the model that one started from; the original model at the end of
    that chain is the one whose license applies. Another local folder stays itself, not on the Hub."""
    shown: tuple[str, str | None, bool] | None = None
    seen: set[Path] = set()
    while name != EMBEDDED:
        path = Path(name).expanduser()
        try:
            manifest_path = path / "manifest.json"
            is_stage = manifest_path.is_file() and path.resolve() not in seen
        except OSError:  # a Hub id that is no path at all
            is_stage = False
        config = None
        if is_stage:
            seen.add(path.resolve())
            try:
                config = json.loads(manifest_path.read_text()).get("config") or {}
            except (OSError, ValueError):
                config = None
        if not isinstance(config, dict) or not isinstance(config.get("model"), str):
            found = (name, revision, not (name.startswith((".", "/", "~")) or path.exists()))
            return (*(shown or found), name)
        if shown is None and config.get("push_to_hub"):
            shown = (str(config["push_to_hub"]), None, True)
        name, revision = config["model"], config.get("revision")
    return (*(shown or (EMBEDDED_HUB_ID, None, True)), EMBEDDED_HUB_ID)


def require_token(repo_id: str) -> None:
    """Fail (one line) unless huggingface_hub finds a token, before a stage writes anything it would push."""
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(
            f"push_to_hub={repo_id} needs a Hugging Face token with write access: set HF_TOKEN in the environment "
            "(or log in with `hf auth login`)"
        )


def push_folder(
    repo_id: str,
    folder: Path,
    *,
    repo_type: str,
    private: bool,
    commit_message: str,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
) -> None:
    """Create the Hub repo when missing (private or public; an existing one keeps its visibility), then upload the
    files of `folder` the patterns select in one commit. The token is huggingface_hub's own (HF_TOKEN)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        repo_type=repo_type,
        folder_path=folder,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        commit_message=commit_message,
    )
    log.info("pushed %s to the Hub %s %s%s", folder, repo_type, repo_id, " (private)" if private else "")
