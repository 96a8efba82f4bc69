"""Typed configs: YAML + `key.sub=value` overrides, one-line errors, hashing, field descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scalequest.config import (
    ConfigError,
    HFEngineConfig,
    SamplingConfig,
    Section,
    build_config,
    describe_fields,
    load_config,
    parse_overrides,
    read_yaml,
    section_types,
)
from scalequest.pipeline import STAGES, command_of, load_pipeline
from scalequest.stages.filter_language import FilterLanguageConfig
from scalequest.stages.generate_questions import GenerateQuestionsConfig

REPO = Path(__file__).resolve().parents[2]


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


# --- override parsing ------------------------------------------------------------------------------


def test_parse_overrides_parses_yaml_scalars_and_lists():
    parsed = parse_overrides(
        [
            "a=1",
            "b=1.5",
            "c=true",
            "d=false",
            "e=[1, 2]",
            "f=null",
            "g.h.i=text",
            "j=",
            "k=a=b",
            "l=[x, y]",
            "m=hello world",
        ]
    )
    assert parsed == {
        "a": 1,
        "b": 1.5,
        "c": True,
        "d": False,
        "e": [1, 2],
        "f": None,
        "g": {"h": {"i": "text"}},
        "j": "",
        "k": "a=b",
        "l": ["x", "y"],
        "m": "hello world",
    }
    assert type(parsed["a"]) is int and type(parsed["b"]) is float


def test_parse_overrides_merges_siblings_of_one_section():
    assert parse_overrides(["s.a=1", "s.b=2"]) == {"s": {"a": 1, "b": 2}}


@pytest.mark.parametrize("item", ["novalue", "=3"])
def test_parse_overrides_rejects_items_without_key_or_equals(item):
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides([item])


def test_parse_overrides_rejects_a_scalar_then_a_sub_key():
    with pytest.raises(ConfigError, match="sampling"):
        parse_overrides(["sampling=5", "sampling.top_p=0.5"])


# --- YAML + overrides ------------------------------------------------------------------------------


def test_yaml_plus_overrides_with_typed_values(tmp_path):
    path = write_yaml(
        tmp_path / "gen.yaml",
        {"output": str(tmp_path / "out"), "num": 5, "sampling": {"temperature": 0.5}, "engine": {"model": "m"}},
    )
    config = load_config(
        GenerateQuestionsConfig,
        path,
        [
            "num=7",
            "sampling.top_p=0.5",
            "sampling.stop=[END, STOP]",
            "sampling.seed=3",
            "engine.batch_size=4",
            "executor.num_cpus_per_worker=2.5",
            "engine.trust_remote_code=true",
            "progress=false",
            "system_prompt=null",
            "shard_size=10",
        ],
    )
    assert config.output == tmp_path / "out"
    assert config.num == 7 and type(config.num) is int
    assert config.sampling.temperature == 0.5  # from YAML, kept
    assert config.sampling.top_p == 0.5
    assert config.sampling.stop == ["END", "STOP"]
    assert config.sampling.seed == 3
    assert config.engine.model == "m"
    assert config.engine.batch_size == 4
    assert config.executor.num_cpus_per_worker == 2.5  # engine.request_timeout is an openai field only
    assert config.engine.trust_remote_code is True
    assert config.progress is False
    assert config.system_prompt is None
    assert config.shard_size == 10


def test_overrides_without_yaml(tmp_path):
    config = load_config(
        FilterLanguageConfig, None, [f"input={tmp_path}/in.jsonl", f"output={tmp_path}/o", "ascii_only=no"]
    )
    assert config.input.path == tmp_path / "in.jsonl"
    assert config.ascii_only is False


def test_float_field_accepts_exponent_notation(tmp_path):
    # PyYAML reads `1e-3` as a string; the float field must still take it.
    config = load_config(GenerateQuestionsConfig, None, [f"output={tmp_path}", "sampling.temperature=1e-3"])
    assert config.sampling.temperature == pytest.approx(0.001)


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", {"output": "o", "nmu": 5})
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, path)
    message = str(err.value)
    assert "'nmu'" in message and str(path) in message
    assert "unknown key" in message
    assert "\n" not in message


def test_unknown_nested_key_in_yaml_names_dotted_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "typo.yaml", {"output": "o", "sampling": {"topp": 0.5}})
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, path)
    assert "sampling.topp" in str(err.value) and str(path) in str(err.value)


def test_unknown_key_in_overrides_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "ok.yaml", {"output": "o"})
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, path, ["engine.modle=x"])
    message = str(err.value)
    assert "engine.modle" in message and str(path) in message and "override" in message


def test_unknown_key_in_overrides_without_yaml_names_the_command_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, None, [f"output={tmp_path}", "bogus=1"])
    assert "'bogus'" in str(err.value) and "command-line" in str(err.value)
    assert "generate-questions" in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("num=many", "num"),
        ("num=-1", "num"),
        ("num=[1, 2]", "num"),
        ("sampling.max_new_tokens=lots", "sampling.max_new_tokens"),
        ("sampling.top_p=1.5", "sampling.top_p"),
        ("progress=maybe", "progress"),
        ("engine.engine=tgi", "engine.engine"),
        ("engine.dtype=int3", "engine.dtype"),
        ("shard_size=0", "shard_size"),
    ],
)
def test_wrong_type_names_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, None, [f"output={tmp_path}", override])
    assert f"'{key}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_wrong_type_in_yaml_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"output": "o", "sampling": {"max_new_tokens": "lots"}})
    with pytest.raises(ConfigError) as err:
        load_config(GenerateQuestionsConfig, path)
    assert "sampling.max_new_tokens" in str(err.value) and str(path) in str(err.value)


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="missing required key 'output'"):
        load_config(GenerateQuestionsConfig, None, [])
    with pytest.raises(ConfigError, match="'input'"):
        load_config(FilterLanguageConfig, None, ["output=o"])


def test_nested_override_keeps_sibling_defaults(tmp_path):
    config = load_config(GenerateQuestionsConfig, None, [f"output={tmp_path}", "sampling.max_new_tokens=32"])
    assert config.sampling.max_new_tokens == 32
    assert config.sampling.top_p == 0.99
    assert config.sampling.temperature == 1.0
    assert config.sampling.seed == 0 and config.sampling.n == 1
    assert config.engine == HFEngineConfig()


def test_nested_yaml_section_keeps_sibling_defaults(tmp_path):
    path = write_yaml(
        tmp_path / "g.yaml", {"output": "o", "sampling": {"max_new_tokens": 32}, "engine": {"model": "x"}}
    )
    config = load_config(GenerateQuestionsConfig, path)
    assert (config.sampling.max_new_tokens, config.sampling.top_p, config.sampling.temperature) == (32, 0.99, 1.0)
    assert config.engine.engine == "hf" and config.engine.dtype == "auto"


def test_stage_sampling_defaults_do_not_leak_into_the_base_model():
    assert GenerateQuestionsConfig(output="o").sampling.top_p == 0.99
    assert GenerateQuestionsConfig(output="o").sampling.max_new_tokens == 512
    assert SamplingConfig().top_p == 1.0 and SamplingConfig().max_new_tokens == 512


def test_assignment_is_validated():
    config = GenerateQuestionsConfig(output="o")
    with pytest.raises(ValueError):
        config.num = "many"


@pytest.mark.parametrize(
    "text, match", [("num: [1\n", "not valid YAML"), ("- a\n- b\n", "mapping"), (None, "does not exist")]
)
def test_bad_config_files(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        read_yaml(path)
    assert str(path) in str(err.value)


def test_empty_yaml_is_an_empty_mapping(tmp_path):
    assert read_yaml(write_yaml(tmp_path / "e.yaml", "")) == {}


# --- config hash -----------------------------------------------------------------------------------


def test_config_hash_ignores_output_and_progress_but_not_content():
    base = GenerateQuestionsConfig(output="a", num=10)
    same = GenerateQuestionsConfig(output="elsewhere/b", num=10, progress=False)
    assert base.config_hash() == same.config_hash()
    assert len(base.config_hash()) == 16 and int(base.config_hash(), 16) >= 0
    assert GenerateQuestionsConfig(output="a", num=11).config_hash() != base.config_hash()
    assert GenerateQuestionsConfig(output="a", num=10, sampling={"seed": 1}).config_hash() != base.config_hash()
    assert GenerateQuestionsConfig(output="a", num=10, shard_size=7).config_hash() != base.config_hash()
    assert GenerateQuestionsConfig(output="a", num=10, engine={"model": "other"}).config_hash() != base.config_hash()


def test_config_hash_is_stable_across_instances_and_key_order(tmp_path):
    one = load_config(GenerateQuestionsConfig, None, ["output=o", "num=3", "sampling.seed=2"])
    two = load_config(GenerateQuestionsConfig, None, ["sampling.seed=2", "num=3", "output=o"])
    assert one.config_hash() == two.config_hash()
    filt_a = FilterLanguageConfig(input=tmp_path / "x", output="o1")
    filt_b = FilterLanguageConfig(input=tmp_path / "x", output="o2", progress=False)
    assert filt_a.config_hash() == filt_b.config_hash()
    assert FilterLanguageConfig(input=tmp_path / "y", output="o1").config_hash() != filt_a.config_hash()


# --- field descriptions ----------------------------------------------------------------------------


def walk_fields(cls: type[Section], prefix: str = ""):
    """(dotted key, FieldInfo, is_section) for every field, recursively."""
    for name, info in cls.model_fields.items():
        annotation = info.annotation
        # A data source is one value on the command line (input=PATH or input={hub: ...}), not a section; an
        # engine section is a union of backends whose fields are listed once each.
        sections = section_types(annotation)
        yield prefix + name, info, bool(sections)
        seen = set()
        for section in sections:
            for key, *rest in walk_fields(section, f"{prefix}{name}."):
                if key not in seen:
                    seen.add(key)
                    yield (key, *rest)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_field_has_a_description(stage):
    config_class = STAGES[stage].config
    assert config_class.stage == stage
    assert (config_class.__doc__ or "").strip(), f"{stage} config has no docstring (used as its --help text)"
    missing = [key for key, info, _ in walk_fields(config_class) if not (info.description or "").strip()]
    assert not missing, f"{stage}: fields without a description: {missing}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_describe_fields_lists_every_leaf_field(stage):
    config_class = STAGES[stage].config
    rows = describe_fields(config_class)
    keys = [key for key, _, _ in rows]
    leaves = [key for key, _, is_section in walk_fields(config_class) if not is_section]
    assert keys == leaves
    assert len(set(keys)) == len(keys)
    for key, default, description in rows:
        assert description.strip(), key
        assert default


def test_describe_fields_defaults():
    rows = {key: default for key, default, _ in describe_fields(GenerateQuestionsConfig)}
    assert rows["output"] == "(required)"
    assert rows["num"] == "1000"
    assert rows["sampling.top_p"] == "0.99"
    assert rows["sampling.temperature"] == "1.0"
    assert rows["sampling.max_new_tokens"] == "512"
    assert rows["sampling.stop"] == "[]"
    assert rows["engine.model"] == json.dumps("embedded")
    assert rows["system_prompt"] == "null"
    filt = {key: default for key, default, _ in describe_fields(FilterLanguageConfig)}
    assert filt["input"] == "(required)" and filt["field"] == '"question"' and filt["ascii_only"] == "true"


# --- shipped configs -------------------------------------------------------------------------------


# Sub-folders of configs/ holding other tools' config files, not ScaleQuest pipelines.
NOT_PIPELINES = {"accelerate"}  # `accelerate launch --config_file configs/accelerate/...`


def shipped_configs() -> list[Path]:
    root = REPO / "configs"
    return sorted(p for p in root.glob("**/*.yaml") if p.relative_to(root).parts[0] not in NOT_PIPELINES)


def test_configs_folder_is_shipped_with_the_package():
    assert (REPO / "configs").resolve() == (REPO / "src" / "scalequest" / "configs").resolve()
    assert shipped_configs(), "no YAML under configs/"


@pytest.mark.parametrize("path", shipped_configs(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_loads_as_a_pipeline(path):
    pipeline, stages = load_pipeline(path)
    assert stages
    names = [name for name, _ in stages]
    order = list(STAGES)
    assert names == sorted(names, key=lambda name: order.index(command_of(name)))
    outputs = {}
    for name, config in stages:
        assert isinstance(config, STAGES[command_of(name)].config)
        body = pipeline.stages[name] or {}
        if "output" not in body:
            assert config.output == pipeline.output_dir / name
        sources = [s for s in STAGES[command_of(name)].feeds.get("input", ()) if s in outputs]
        if sources and "input" not in body and "@" not in name:
            assert config.input.path == outputs[sources[0]]  # wired to the preferred earlier stage
        outputs[name] = config.output


def test_pipeline_overrides_reach_one_stage(tmp_path):
    path = write_yaml(
        tmp_path / "p.yaml",
        {"output_dir": str(tmp_path / "run"), "stages": {"generate-questions": {"num": 4}, "filter-language": {}}},
    )
    pipeline, stages = load_pipeline(path, ["generate-questions.sampling.seed=9", f"output_dir={tmp_path / 'other'}"])
    gen, filt = dict(stages)["generate-questions"], dict(stages)["filter-language"]
    assert gen.num == 4 and gen.sampling.seed == 9 and gen.sampling.top_p == 0.99
    assert gen.output == tmp_path / "other" / "generate-questions"
    assert filt.input.path == gen.output and filt.output == tmp_path / "other" / "filter-language"


def test_pipeline_unknown_key_in_a_stage_names_stage_key_and_file(tmp_path):
    path = write_yaml(tmp_path / "p.yaml", {"output_dir": "run", "stages": {"generate-questions": {"nmu": 4}}})
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "nmu" in str(err.value) and str(path) in str(err.value) and "generate-questions" in str(err.value)


def test_pipeline_unknown_stage_lists_valid_stages(tmp_path):
    path = write_yaml(tmp_path / "p.yaml", {"output_dir": "run", "stages": {"generate-questionz": {}}})
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "generate-questionz" in str(err.value) and ", ".join(STAGES) in str(err.value)


def test_pipeline_stages_out_of_order_lists_the_order(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("output_dir: run\nstages:\n  filter-language: {input: x}\n  generate-questions: {}\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    assert "order" in str(err.value) and ", ".join(STAGES) in str(err.value)


def test_pipeline_stage_with_empty_body_uses_defaults(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\nstages:\n  generate-questions:\n    num: 2\n  filter-language:\n")
    _, stages = load_pipeline(path)
    assert [name for name, _ in stages] == ["generate-questions", "filter-language"]


# --- engines: fields typed per backend --------------------------------------------------------------


def test_engine_fields_are_typed_per_backend_with_the_keys_users_write(tmp_path):
    from scalequest.config import OpenAIEngineConfig, VLLMEngineConfig

    base = {"output": str(tmp_path / "q")}
    assert isinstance(build_config(GenerateQuestionsConfig, {**base, "engine": {"model": "m"}}).engine, HFEngineConfig)
    openai = build_config(
        GenerateQuestionsConfig, {**base, "engine": {"engine": "openai", "base_url": "http://h/v1"}}
    ).engine
    assert isinstance(openai, OpenAIEngineConfig) and openai.base_url == "http://h/v1"
    vllm = load_config(
        GenerateQuestionsConfig, None, [f"output={tmp_path / 'q'}", "engine.engine=vllm", "engine.max_model_len=512"]
    )
    assert isinstance(vllm.engine, VLLMEngineConfig) and vllm.engine.max_model_len == 512
    assert "base_url" not in vllm.model_dump()["engine"]  # config.yaml holds only the backend's own fields


def test_a_field_of_another_backend_names_its_backend(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'engine.base_url' for stage generate-questions "
        r"\(a field of engine openai, not hf\)",
    ):
        build_config(GenerateQuestionsConfig, {"output": "q", "engine": {"base_url": "http://h/v1"}}, "g.yaml")
    with pytest.raises(ConfigError, match=r"key 'engine.engine': one of hf, vllm, openai \(got 'tpu'\)"):
        build_config(GenerateQuestionsConfig, {"output": "q", "engine": {"engine": "tpu"}}, "g.yaml")
