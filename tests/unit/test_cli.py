"""The command line: help lists every field, bad input is one `error:` line with exit code 2, and
`scalequest run -c pipeline.yaml` runs stages in order (tiny random Llama from conftest)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_generation, write_jsonl
from scalequest import io
from scalequest.cli import EXIT_BAD_INPUT, main
from scalequest.config import ConfigError, Section, section_types
from scalequest.io import DataError
from scalequest.pipeline import STAGES


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def call(argv: list[str]) -> int:
    """main(argv) -> exit code, whether it returns or raises SystemExit (argparse, --help)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)


def leaf_fields(cls: type[Section], prefix: str = "", defaults=None):
    """(dotted key, default as --help prints it, description) of every leaf field, walked independently."""
    for name, info in cls.model_fields.items():
        if defaults is not None:
            value = getattr(defaults, name)
        else:
            value = None if info.is_required() else info.get_default(call_default_factory=True)
        sections = section_types(info.annotation)
        if sections:
            seen = set()
            for section in sections:
                current = value if isinstance(value, section) else None
                for key, *rest in leaf_fields(section, f"{prefix}{name}.", current):
                    if key not in seen:
                        seen.add(key)
                        yield (key, *rest)
            continue
        shown = "(required)" if defaults is None and info.is_required() else json.dumps(value, default=str)
        yield prefix + name, shown, info.description


# --- help ------------------------------------------------------------------------------------------


def test_top_level_help_lists_every_command(capsys):
    assert call(["--help"]) == 0
    out = capsys.readouterr().out
    for name, config_class in ((n, s.config) for n, s in STAGES.items()):
        assert name in out
    for command in ("run", "demo", "serve"):
        assert command in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_help_lists_every_field_with_description_and_default(stage, capsys):
    assert call([stage, "--help"]) == 0
    out = capsys.readouterr().out
    config_class = STAGES[stage].config
    assert config_class.__doc__.strip().splitlines()[0] in out
    lines = out.splitlines()
    fields = list(leaf_fields(config_class))
    assert fields
    for key, default, description in fields:
        matching = [line for line in lines if line.strip().startswith(key + " ")]
        assert matching, f"{stage} --help does not list {key}"
        line = matching[0]
        assert description in line, f"{key}: description missing from {line!r}"
        assert f"[default: {default}]" in line, f"{key}: default {default} missing from {line!r}"
    for flag in ("-c", "--force", "--debug", "key=value"):
        assert flag in out


def test_run_help_lists_stages_in_order(capsys):
    assert call(["run", "--help"]) == 0
    # argparse may wrap a line at a stage name's hyphen ("filter-\ndifficulty"): compare without whitespace.
    assert ",".join(STAGES) in "".join(capsys.readouterr().out.split())


# --- bad input: one line, exit code 2, no traceback ------------------------------------------------


def assert_one_error_line(capsys, code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert code == EXIT_BAD_INPUT, f"exit code {code}; stderr: {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err and "Traceback" not in captured.out
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def test_unknown_key(tmp_path, capsys):
    code = call(["generate-questions", f"output={tmp_path / 'o'}", "bogus=1"])
    assert_one_error_line(capsys, code, "'bogus'")
    assert not (tmp_path / "o").exists()


def test_unknown_key_in_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "gen.yaml"
    config.write_text(yaml.safe_dump({"output": str(tmp_path / "o"), "sampling": {"top_k": 5}}))
    code = call(["generate-questions", "-c", config, "num=1"])
    assert_one_error_line(capsys, code, "sampling.top_k", str(config))


def test_missing_config_file(tmp_path, capsys):
    code = call(["generate-questions", "-c", tmp_path / "nope.yaml"])
    assert_one_error_line(capsys, code, "nope.yaml")


@pytest.mark.parametrize(
    "override, key", [("num=many", "num"), ("sampling.max_new_tokens=1.5", "sampling.max_new_tokens")]
)
def test_wrong_type(tmp_path, capsys, override, key):
    code = call(["generate-questions", f"output={tmp_path / 'o'}", override])
    assert_one_error_line(capsys, code, f"'{key}'")


def test_missing_required_key(capsys):
    assert_one_error_line(capsys, call(["generate-questions", "num=1"]), "'output'")


def test_bad_override_syntax(tmp_path, capsys):
    assert_one_error_line(capsys, call(["generate-questions", f"output={tmp_path}", "num"]), "key=value")


def test_missing_model_path(tmp_path, capsys):
    out = tmp_path / "o"
    code = call(["generate-questions", f"output={out}", "engine.model=./does-not-exist", "num=2", "progress=false"])
    assert_one_error_line(capsys, code, "does-not-exist")
    assert not out.exists()


def test_missing_input(tmp_path, capsys):
    code = call(["filter-language", f"input={tmp_path / 'none.jsonl'}", f"output={tmp_path / 'o'}"])
    assert_one_error_line(capsys, code, "none.jsonl", "does not exist")
    assert not (tmp_path / "o").exists()


def test_empty_input_folder(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code = call(["filter-language", f"input={tmp_path / 'in'}", f"output={tmp_path / 'o'}"])
    assert_one_error_line(capsys, code, str(tmp_path / "in"))
    assert not (tmp_path / "o").exists()


def test_non_utf8_input(tmp_path, capsys):
    source = tmp_path / "latin.jsonl"
    source.write_bytes('{"question": "caf\u00e9?"}\n'.encode("latin-1"))
    code = call(["filter-language", f"input={source}", f"output={tmp_path / 'o'}"])
    assert_one_error_line(capsys, code, str(source), "UTF-8")
    assert not (tmp_path / "o").exists()


def test_corrupt_jsonl_line_names_file_and_line(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"question": "A?"}\n{"question": "B?"}\n{"question": \n{"question": "D?"}\n')
    code = call(["filter-language", f"input={source}", f"output={tmp_path / 'o'}", "shard_size=1"])
    assert_one_error_line(capsys, code, f"{source}:3")
    assert not (tmp_path / "o").exists()


def test_output_folder_of_another_stage(tmp_path, tiny_model_dir, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    filtered = tmp_path / "filtered"
    assert call(["filter-language", f"input={source}", f"output={filtered}", "progress=false"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in filtered.iterdir())
    code = call(
        ["generate-questions", f"output={filtered}", f"engine.model={tiny_model_dir}", "num=2", "progress=false"]
    )
    assert_one_error_line(capsys, code, "filter-language", "generate-questions", str(filtered))
    code = call(["generate-questions", "--force", f"output={filtered}", f"engine.model={tiny_model_dir}", "num=2"])
    assert_one_error_line(capsys, code, "filter-language", "generate-questions")
    assert sorted(p.name for p in filtered.iterdir()) == before


def test_non_empty_foreign_output_folder(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"question": "A?"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    code = call(["filter-language", f"input={source}", f"output={tmp_path / 'mine'}"])
    assert_one_error_line(capsys, code, str(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    "argv",
    [
        ["generate-questions", "output=o", "bogus=1"],
        ["filter-language", "input=CORRUPT", "output=o"],
    ],
    ids=["unknown-key", "corrupt-line"],
)
def test_real_process_prints_exactly_one_line(tmp_path, argv):
    """The whole stderr of a real process (logging, warnings, progress bars included) is one line."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"question": "A?"}\n{"question": "B?\n')
    argv = [a.replace("CORRUPT", str(source)) for a in argv]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "scalequest.cli", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "o").exists()


def test_model_folder_without_a_model(tmp_path, capsys):
    (tmp_path / "empty-model").mkdir()
    code = call(
        [
            "generate-questions",
            f"output={tmp_path / 'o'}",
            f"engine.model={tmp_path / 'empty-model'}",
            "num=2",
            "progress=false",
        ]
    )
    assert_one_error_line(capsys, code, "empty-model")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_model_folder_without_a_tokenizer(tmp_path, tiny_model_dir, capsys):
    model = tmp_path / "no-tokenizer"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, model / name)
    code = call(["generate-questions", f"output={tmp_path / 'o'}", f"engine.model={model}", "num=2", "progress=false"])
    assert_one_error_line(capsys, code, "no-tokenizer")
    assert not (tmp_path / "o").exists()


def test_openai_without_a_key_fails_before_the_output_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SQ_TEST_NO_KEY", raising=False)
    source = write_rows(tmp_path / "q.jsonl", [{"id": "a", "question": "What is 1 + 1?"}])
    code = call(
        [
            "generate-responses",
            f"input={source}",
            f"output={tmp_path / 'o'}",
            "engine.engine=openai",
            "engine.model=gpt-4o-mini",
            "engine.api_key_env=SQ_TEST_NO_KEY",
            "progress=false",
        ]
    )
    assert_one_error_line(capsys, code, "SQ_TEST_NO_KEY")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ([{"id": "a", "question": 12}], "field 'question' must be text, not int"),
        ([{"id": ["a"], "question": "Q?"}], "id must be a non-empty string or an integer"),
        ([{"id": "a", "question": "Q?"}, {"id": "a", "question": "R?"}], "duplicate id 'a'"),
    ],
    ids=["numeric-question", "list-id", "duplicate-id"],
)
def test_bad_rows_give_one_line_with_file_and_line(tmp_path, rows, fragment, capsys):
    source = write_rows(tmp_path / "q.jsonl", rows)
    for stage in (["filter-language"], ["decontaminate", "benchmarks=[gsm8k]"]):
        code = call([*stage, f"input={source}", f"output={tmp_path / 'o'}", "progress=false"])
        assert_one_error_line(capsys, code, fragment, f"q.jsonl:{len(rows)}")
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_equal_to_input_is_refused_and_the_input_kept(tmp_path, force, capsys):
    source = tmp_path / "in"
    source.mkdir()
    write_rows(source / "q.jsonl", [{"id": "a", "question": "What is 1 + 1?"}])
    code = call(["filter-language", f"input={source}", f"output={source}", "progress=false", *force])
    assert_one_error_line(capsys, code, "overlaps input")
    assert (source / "q.jsonl").is_file()


def test_training_on_an_unfinished_stage_output_is_refused(tmp_path, capsys):
    source = tmp_path / "responses"
    source.mkdir()
    (source / "config.yaml").write_text("stage: generate-responses\nrun_hash: x\n")
    write_rows(source / "shard-00000.jsonl", [{"id": "a", "question": "Q?", "response": "R"}])
    code = call(["sft", f"input={source}", f"output={tmp_path / 'o'}", "progress=false"])
    assert_one_error_line(capsys, code, "generate-responses", "has not finished")
    assert not (tmp_path / "o").exists()


def test_a_dead_server_ends_with_exit_3_and_the_rows_pending(tmp_path, tiny_model_dir, capsys):
    from scalequest.cli import EXIT_UNFINISHED

    source = write_rows(tmp_path / "q.jsonl", [{"id": i, "question": f"What is {i} + 1?"} for i in range(4)])
    argv = [
        "generate-responses",
        f"input={source}",
        f"output={tmp_path / 'o'}",
        "engine.engine=openai",
        "engine.model=tiny",
        f"engine.tokenizer={tiny_model_dir}",
        "engine.base_url=http://127.0.0.1:9/v1",  # nothing listens on the discard port
        "engine.max_retries=0",
        "shard_size=2",
        "progress=false",
    ]
    code = call(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == EXIT_UNFINISHED
    assert last.startswith("error: generate-responses: 2 of 4 rows failed (APIConnectionError: 2), 2 not tried")
    assert "rerun to retry them" in last
    assert io.read_manifest(tmp_path / "o") is None and not list((tmp_path / "o").glob("shard-*.jsonl"))


# --- --debug ---------------------------------------------------------------------------------------


def test_debug_raises_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="bogus"):
        main(["generate-questions", "--debug", f"output={tmp_path / 'o'}", "bogus=1"])


def test_debug_raises_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        main(["filter-language", "--debug", f"input={tmp_path / 'none.jsonl'}", f"output={tmp_path / 'o'}"])


def test_flags_may_come_between_overrides(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "o"
    code = call(
        ["generate-questions", f"output={out}", "--force", "num=0", f"engine.model={tiny_model_dir}", "progress=false"]
    )
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / io.MANIFEST).read_text())["config"]["num"] == 0


def test_stray_argument_after_a_flag_is_refused(tmp_path, capsys):
    code = call(["generate-questions", f"output={tmp_path / 'o'}", "--force", "num"])
    assert code == 2
    assert "num" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- run -c pipeline.yaml --------------------------------------------------------------------------


def tiny_pipeline(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "run"),
                "stages": {
                    "generate-questions": tiny_generation(model_dir, num=6),
                    "filter-language": {"progress": False},
                },
            },
            sort_keys=False,
        )
    )
    return path


def summary_lines(out: str) -> dict[str, str]:
    return {line.split(":")[0]: line for line in out.splitlines() if line.split(":")[0] in STAGES}


def test_run_pipeline_prints_a_summary_per_stage(tmp_path, tiny_model_dir, capsys):
    pipeline = tiny_pipeline(tmp_path, tiny_model_dir)
    assert call(["run", "-c", pipeline]) == 0, capsys.readouterr().err
    lines = summary_lines(capsys.readouterr().out)
    assert list(lines) == ["generate-questions", "filter-language"]
    gen, filt = tmp_path / "run" / "generate-questions", tmp_path / "run" / "filter-language"
    assert lines["generate-questions"].startswith("generate-questions: 6 in -> 6 out")
    assert lines["generate-questions"].endswith(f"-> {gen}")
    assert "tokens generated" in lines["generate-questions"]
    assert lines["filter-language"].startswith("filter-language: 6 in -> ")
    assert lines["filter-language"].endswith(f"-> {filt}")

    gen_manifest = json.loads((gen / io.MANIFEST).read_text())
    filt_manifest = json.loads((filt / io.MANIFEST).read_text())
    assert gen_manifest["rows_out"] == 6
    assert filt_manifest["input"] == str(gen) and filt_manifest["input_stage"] == "generate-questions"
    assert filt_manifest["rows_in"] == 6
    assert filt_manifest["rows_out"] + sum(filt_manifest["dropped"].values()) == 6
    assert len(io.load_rows(filt)) == filt_manifest["rows_out"]

    # Rerun: both stages are skipped, nothing is rewritten, the same summary comes back.
    before = {p: p.stat().st_mtime_ns for p in sorted((tmp_path / "run").rglob("*")) if p.is_file()}
    assert call(["run", "-c", pipeline]) == 0
    again = summary_lines(capsys.readouterr().out)
    assert {k: v.split(",")[0] for k, v in again.items()} == {k: v.split(",")[0] for k, v in lines.items()}
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # Another config on finished shards needs --force ...
    code = call(["run", "-c", pipeline, "generate-questions.sampling.seed=5"])
    assert_one_error_line(capsys, code, "--force")
    # ... and with it, the stage and the one after it are redone.
    assert call(["run", "-c", pipeline, "--force", "generate-questions.sampling.seed=5"]) == 0
    assert json.loads((gen / io.MANIFEST).read_text())["config"]["sampling"]["seed"] == 5
    assert json.loads((filt / io.MANIFEST).read_text())["input_fingerprint"] != filt_manifest["input_fingerprint"]


def test_run_needs_a_config(capsys):
    assert_one_error_line(capsys, call(["run"]), "-c")


def test_run_unknown_stage_lists_valid_ones(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\nstages:\n  generate-answers: {{}}\n")
    line = assert_one_error_line(capsys, call(["run", "-c", path]), "generate-answers", str(path))
    assert ", ".join(STAGES) in line
    assert not (tmp_path / "run").exists()


def test_run_stages_out_of_order_lists_the_order(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'run'}\nstages:\n  filter-language: {{input: x}}\n  generate-questions: {{}}\n"
    )
    line = assert_one_error_line(capsys, call(["run", "-c", path]), "order")
    assert ", ".join(STAGES) in line
    assert not (tmp_path / "run").exists()


def test_run_unknown_key_names_stage_and_file(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(f"output_dir: {tmp_path / 'run'}\nstages:\n  generate-questions: {{nmu: 3}}\n")
    assert_one_error_line(capsys, call(["run", "-c", path]), "nmu", str(path), "generate-questions")


def test_stage_summary_shows_the_loss_a_short_training_run_has(capsys):
    from scalequest.cli import print_stage_summary

    base = {"rows_in": 9, "wall_seconds": 2.0, "config": {"output": "out"}, "steps": 3}
    print_stage_summary("qpo", {**base, "first_logged_loss": 0.69, "last_logged_loss": 0.69, "train_loss": 0.6})
    print_stage_summary("sft", {**base, "first_logged_loss": None, "last_logged_loss": None, "train_loss": 1.25})
    print_stage_summary("qft", {**base, "first_logged_loss": 2.5, "last_logged_loss": 1.0, "train_loss": 1.7})
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "qpo: 9 in, 3 steps, train loss 0.600, 2.0s -> out",
        "sft: 9 in, 3 steps, train loss 1.250, 2.0s -> out",
        "qft: 9 in, 3 steps, loss 2.500 -> 1.000, 2.0s -> out",
    ]


def test_run_shows_one_progress_line_per_stage_and_logs_each_stage(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from io import StringIO

    from rich.console import Console

    from scalequest import progress

    screen = Console(file=StringIO(), record=True, width=200)  # not a terminal: each stage's final line, once
    monkeypatch.setattr(progress, "CONSOLE", screen)
    pipeline = tiny_pipeline(tmp_path, tiny_model_dir)
    argv = ["run", "-c", pipeline, "generate-questions.progress=true", "filter-language.progress=true"]
    assert call(argv) == 0, capsys.readouterr().err
    lines = screen.export_text().splitlines()
    assert [line.split(" ━")[0] for line in lines] == ["[1/2] generate-questions", "[2/2] filter-language"]
    assert "6/6 rows · " in lines[0] and " tok/s · ETA 0:00:00 · removed 0" in lines[0]
    filtered = json.loads((tmp_path / "run" / "filter-language" / io.MANIFEST).read_text())
    assert lines[1].endswith(f"removed {sum(filtered['dropped'].values())}")
    captured = capsys.readouterr()
    assert "rows/s" not in captured.out + captured.err and "generate:" not in captured.err  # no other bar
    for stage in ("generate-questions", "filter-language"):
        log = (tmp_path / "run" / stage / "log.txt").read_text().splitlines()
        assert f"{stage}: started on 6 input rows" in log[0] and f"{stage}: finished: 6 rows in" in log[-1]
