"""scalequest report: one self-contained HTML page (charts embedded) plus PNGs, from what a run left on disk."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import pytest

from scalequest.cli import main
from scalequest.report import FIGURES, find_stages, sample_rows, write_report

EVIL = '<script>alert("owned")</script> & <img src=x onerror=alert(1)>'
SECTIONS = [
    "funnel",
    "tokens-time",
    "cost",
    "difficulty",
    "reward",
    "response-length",
    "evaluation",
    "training",
    "qpo-margins",
    "samples",
]


def write_stage(folder, stage, rows=(), removed=(), **manifest):
    folder.mkdir(parents=True)
    if rows:
        (folder / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if removed:
        (folder / "removed").mkdir()
        (folder / "removed" / "shard-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in removed))
    (folder / "manifest.json").write_text(json.dumps({"stage": stage, "wall_seconds": 1.5, **manifest}))


def buckets(*counts):
    return dict(zip(["very_easy", "easy", "medium", "hard", "very_hard"], counts))


def fake_run(root):
    """A small pipeline output folder: every stage that feeds a section, with a few rows each."""
    questions = [{"id": f"q-{i}", "question": f"What is {i} + {i}?", "generator": "gen-a"} for i in range(4)]
    questions.append({"id": "q-evil", "question": EVIL, "generator": "gen-a"})
    write_stage(
        root / "generate-questions",
        "generate-questions",
        rows=questions,
        rows_in=0,
        rows_out=5,
        tokens_in=50,
        tokens_out=400,
        gpu_hours=0.5,
        devices=["NVIDIA H100"],
        finished_at="2026-01-01T00:00:00+00:00",
    )
    write_stage(
        root / "filter-language",
        "filter-language",
        rows=questions[:3],
        removed=[
            {"id": "q-3", "reason": "duplicate", "evidence": {"first_id": "q-0", "text": "what is 0 + 0"}, "row": {}},
            {"id": "q-evil", "reason": "non_ascii", "evidence": {"characters": [EVIL]}, "row": questions[4]},
        ],
        rows_in=5,
        rows_out=3,
        dropped={"duplicate": 1, "non_ascii": 1},
        finished_at="2026-01-01T00:01:00+00:00",
    )
    write_stage(
        root / "filter-difficulty",
        "filter-difficulty",
        rows=[{**q, "difficulty": 0.5} for q in questions[:2]],
        removed=[{"id": "q-2", "reason": "bottom_fraction", "evidence": {"difficulty": 0.1, "rule": {}}, "row": {}}],
        rows_in=3,
        rows_out=2,
        dropped={"bottom_fraction": 1},
        by_generator={
            "gen-a": {
                "rule": {"bottom_fraction": 0.3},
                "before": buckets(1, 0, 2, 0, 0),
                "after": buckets(0, 0, 2, 0, 0),
            }
        },
    )
    responses = [
        {"id": f"q-{i}-r{j}", "question_id": f"q-{i}", "response": "2", "completion_tokens": 10 + 7 * j + i}
        for i in range(2)
        for j in range(3)
    ]
    write_stage(
        root / "generate-responses",
        "generate-responses",
        rows=responses,
        rows_in=2,
        rows_out=6,
        counts={"responses_generated": 6, "finish_length": 1},
        row_units={"in": "questions", "out": "responses"},
    )
    selected = [
        {
            "id": f"q-{i}",
            "response_id": f"q-{i}-r0",
            "reward_score": 2.0 + i,
            "candidate_scores": {f"q-{i}-r0": 2.0 + i, f"q-{i}-r1": 1.0, f"q-{i}-r2": 0.5},
        }
        for i in range(2)
    ]
    write_stage(
        root / "reward-select",
        "reward-select",
        rows=selected,
        removed=[
            {"id": "q-0-r1", "reason": "lower_reward", "evidence": {"score": 1.0, "chosen_score": 2.0}, "row": {}}
        ],
        rows_in=6,
        rows_out=2,
        dropped={"lower_reward": 4},
    )
    write_stage(
        root / "qpo",
        "qpo",
        rows_in=8,
        steps=3,
        train_loss=0.69,
        log_history=[
            {"step": s, "loss": 0.7 - 0.01 * s, "rewards/margins": 0.02 * s, "rewards/accuracies": 0.5}
            for s in (1, 2, 3)
        ]
        + [{"step": 3, "train_loss": 0.69, "train_runtime": 1.0}],
    )
    write_stage(
        root / "sft",
        "sft",
        rows_in=2,
        steps=2,
        log_history=[{"step": 1, "loss": 1.2}, {"step": 2, "loss": 0.9}, {"step": 2, "eval_loss": 1.0}],
    )
    write_stage(
        root / "evaluate",
        "evaluate",
        summary=[
            {"benchmark": "gsm8k", "n": 2, "accuracy": 50.0, "mean_response_tokens": 30.0, "no_answer": 0},
            {"benchmark": "math500", "n": 2, "accuracy": 0.0, "mean_response_tokens": 40.0, "no_answer": 1},
            {"benchmark": "average", "n": 4, "accuracy": 25.0},
        ],
    )
    (root / "unfinished").mkdir()  # no manifest: not a stage
    return root


def images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_every_section_with_embedded_images_and_pngs(tmp_path):
    run = fake_run(tmp_path / "run")
    path = write_report(run, price=2.0)
    assert path == run / "report" / "report.html"
    page = path.read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in page, key
    embedded = images(page)
    assert len(embedded) == len(FIGURES)
    for name in FIGURES:
        png = (run / "report" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and png in embedded, name
    # Nothing is fetched: no http(s) address or relative file reference anywhere in the page.
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)
    assert "http://" not in page and "https://" not in page.replace("http-equiv", "")
    # The figures' numbers: funnel reasons, evaluation, cost at the price given, samples with evidence.
    assert "duplicate 1, non_ascii 1" in page
    assert "<td>evaluate</td><td>math500</td>" in page
    assert "Cost ($2.00/GPU-hour)" in page and '<td class="num">1.00</td>' in page  # 0.5 GPU-hours x $2
    assert "first_id" in page and "bottom_fraction" in page and "lower_reward" in page
    assert "1 of 6" in page  # responses cut at the token limit
    assert "unfinished" not in page


def test_model_written_text_is_escaped(tmp_path):
    page = write_report(fake_run(tmp_path / "run")).read_text()
    assert EVIL not in page
    assert "&lt;script&gt;alert(" in page
    assert page.count("<script>") == 1  # only the page's own check


def test_absent_stages_leave_their_sections_out(tmp_path):
    run = tmp_path / "run"
    write_stage(
        run / "generate-questions",
        "generate-questions",
        rows=[{"id": "q-0", "question": "1+1?"}],
        rows_in=0,
        rows_out=1,
    )
    (run / "report").mkdir(parents=True)
    (run / "report" / "reward-scores.png").write_bytes(b"stale")  # from an earlier report of another run
    page = write_report(run).read_text()
    for key in ("funnel", "tokens-time", "cost", "samples"):
        assert f'<section id="{key}">' in page
    for key in ("difficulty", "reward", "response-length", "evaluation", "training", "qpo-margins"):
        assert f'id="{key}"' not in page
    assert sorted(p.name for p in (run / "report").glob("*.png")) == ["funnel.png", "tokens-time.png"]
    assert len(images(page)) == 2


def test_single_stage_folder_and_nested_pipelines(tmp_path):
    run = fake_run(tmp_path / "runs" / "demo")
    page = write_report(run / "evaluate", output=tmp_path / "eval-report").read_text()
    assert '<section id="evaluation">' in page and 'id="funnel"' not in page
    assert (tmp_path / "eval-report" / "evaluation.png").is_file()
    stages, warnings = find_stages(tmp_path / "runs")  # a folder of pipeline folders, one level down
    assert [s.name for s in stages][:3] == ["demo/qpo", "demo/generate-questions", "demo/filter-language"]
    assert warnings == []
    (run / "sft" / "manifest.json").write_text("{not json")
    stages, warnings = find_stages(run)
    assert "sft" not in [s.name for s in stages] and "damaged" in warnings[0]


def test_large_outputs_are_read_by_sampling(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    for shard in range(50):
        rows = [{"id": f"{shard}-{i}", "completion_tokens": i} for i in range(100)]
        (folder / f"shard-{shard:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = sample_rows(folder, cap=200)
    assert len(rows) == 200
    assert len({row["id"].split("-")[0] for row in rows}) == 50  # spread over every shard
    assert len({row["id"].split("-")[0] for row in sample_rows(folder, cap=10)}) == 10


def test_report_command(tmp_path, capsys):
    run = fake_run(tmp_path / "run")
    assert main(["report", str(run), "--output", str(tmp_path / "out"), "--price", "1.5"]) == 0
    assert str(tmp_path / "out" / "report.html") in capsys.readouterr().out
    assert "Cost ($1.50/GPU-hour)" in (tmp_path / "out" / "report.html").read_text()
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no finished stage" in capsys.readouterr().err


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


def render(page_path, profile) -> tuple[dict[str, str], list[str]]:
    """The page's own check (images, not loaded, errors) after load in headless Chromium, and its console lines."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}"]
        + ["--enable-logging=stderr", "--v=0", "--dump-dom", page_path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    check = re.search(r'<p id="page-check"([^>]*)>([^<]*)</p>', done.stdout)
    assert check, done.stdout[-2000:]
    found = dict(re.findall(r'data-(\w+)="([^"]*)"', check.group(1)), text=check.group(2))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return found, console


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    path = write_report(fake_run(tmp_path / "run"))
    found, console = render(path, tmp_path / "profile")
    assert found["images"] == str(len(FIGURES)), found
    assert (found["broken"], found["errors"]) == ("0", "0"), found["text"]
    assert console == []
    # The check itself sees a broken image and a script error.
    page = path.read_text().replace("base64,", "base64,AAAA", 1)
    page = page.replace("</body>", '<script>throw new Error("boom")</script></body>')
    (tmp_path / "broken.html").write_text(page)
    found, console = render(tmp_path / "broken.html", tmp_path / "profile")
    assert (found["broken"], found["errors"]) == ("1", "2"), found["text"]
    assert any("boom" in line for line in console)


def test_a_training_stage_that_names_only_its_input_units(tmp_path):
    """reward-train counts preference pairs in and writes a model, not rows: its funnel line has "in" units only."""
    write_stage(tmp_path / "run" / "reward-train", "reward-train", rows_in=6, row_units={"in": "preference pairs"})
    page = write_report(tmp_path / "run").read_text()
    assert "preference pairs" in page


def test_a_killed_or_running_stage_is_named_as_missing(tmp_path):
    run = fake_run(tmp_path / "run")
    (run / "sft" / "manifest.json").unlink()  # killed while training: config.yaml, no manifest
    (run / "sft" / "config.yaml").write_text("stage: sft\n")
    page = write_report(run).read_text()
    assert "sft: not finished (still running, or killed)" in page
    assert '<section id="evaluation">' in page  # what finished is drawn
