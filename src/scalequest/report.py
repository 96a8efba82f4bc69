"""`scalequest report RUN_DIR`: one self-contained HTML page of a run, plus its charts as PNG files.

RUN_DIR is a pipeline's output folder (one sub-folder per stage, named COMMAND or COMMAND@TAG), a folder of such
pipeline folders (looked into one level deep), or a single stage folder. Everything comes from what the stages
left on disk: the manifests (funnel, tokens, time, cost, difficulty histograms, evaluation, trainer logs) and a
capped sample of the shard rows and removed rows (reward scores, response lengths, samples with their evidence),
so a run of a million rows reports in seconds. A section whose stage did not run is left out.

The page needs no server and no network: the charts are embedded as base64 data URIs (the PNGs are written
beside it too), the page's Content-Security-Policy forbids every fetch, and all run text is HTML-escaped
(rows are model-written). A small inline script records, in the page's footer, how many images failed to
load and which script errors happened, so a browser test can check the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import random
import statistics
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

from scalequest import io

REPORT_DIR = "report"
REPORT_FILE = "report.html"
MAX_ROWS = 2000  # rows read per stage (kept rows, and again removed rows), spread over its shards
SAMPLES = 3  # sample rows shown per stage and per removed reason
MAX_TEXT = 1200  # characters of one string shown in a sample
MAX_ITEMS = 20  # items of one list or mapping shown in a sample
# Every figure the report can write; a figure not drawn this time is deleted, so none is stale.
FIGURES = (
    "funnel.png",
    "tokens-time.png",
    "difficulty.png",
    "reward-scores.png",
    "response-length.png",
    "evaluation.png",
    "training-loss.png",
    "qpo-margins.png",
)


@dataclass
class StageRun:
    name: str  # the stage folder's name (COMMAND or COMMAND@TAG), after its pipeline folder's when nested
    folder: Path
    manifest: dict[str, Any]

    @property
    def command(self) -> str:
        return str(self.manifest.get("stage", self.name.rpartition("/")[2].split("@", 1)[0]))


def find_stages(run_dir: Path, skip: Path | None = None) -> tuple[list[StageRun], list[str]]:
    """The finished stages under `run_dir` in pipeline order, and a warning for each damaged manifest."""
    warnings: list[str] = []

    def manifest_of(folder: Path) -> dict | None:
        try:
            manifest = io.read_manifest(folder)
        except io.DataError as err:
            warnings.append(str(err))
            return None
        if manifest is None and (folder / io.CONFIG).is_file():  # a stage output without its manifest
            warnings.append(f"{folder.name}: not finished (still running, or killed): not drawn; rerun it to finish")
        return manifest if isinstance(manifest, dict) and "stage" in manifest else None

    def subfolders(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.resolve() != skip)

    own = manifest_of(run_dir)
    if own is not None:
        return [StageRun(run_dir.resolve().name, run_dir, own)], warnings
    found = []
    for child in subfolders(run_dir):
        manifest = manifest_of(child)
        if manifest is not None:
            found.append(StageRun(child.name, child, manifest))
            continue
        for grandchild in subfolders(child):  # a pipeline's output folder inside RUN_DIR
            manifest = manifest_of(grandchild)
            if manifest is not None:
                found.append(StageRun(f"{child.name}/{grandchild.name}", grandchild, manifest))
    from scalequest.pipeline import STAGES

    order = list(STAGES)

    def key(stage: StageRun) -> tuple:
        index = order.index(stage.command) if stage.command in order else len(order)
        return stage.name.rpartition("/")[0], index, str(stage.manifest.get("finished_at") or ""), stage.name

    return sorted(found, key=key), warnings


# Reading rows by sampling


def sample_file_rows(files: list[Path], cap: int) -> list[dict]:
    """At most `cap` rows spread over `files`: the first rows of each (of evenly spaced files when there are more
    files than `cap`)."""
    if not files or cap <= 0:
        return []
    if len(files) > cap:
        step = len(files) / cap
        files = [files[int(i * step)] for i in range(cap)]
    per_file = max(1, cap // len(files))
    rows: list[dict] = []
    for path in files:
        with closing(io.read_file(path)) as reader:
            rows.extend(islice(reader, per_file))
    return rows[:cap]


def sample_rows(folder: Path, cap: int = MAX_ROWS) -> list[dict]:
    return sample_file_rows(sorted(folder.glob(io.SHARD_GLOB)), cap)


def sample_removed(folder: Path, cap: int = MAX_ROWS) -> list[dict]:
    return sample_file_rows(sorted((folder / io.REMOVED_DIR).glob(io.SHARD_GLOB)), cap)


# Figures


def new_figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (no pyplot, no display, safe in any thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def panel_grid(count: int):
    """A figure of `count` small panels, at most three to a row, and its first `count` axes (the rest hidden)."""
    columns = min(3, count)
    lines = math.ceil(count / columns)
    figure = new_figure(4.2 * columns, 3.2 * lines)
    axes = figure.subplots(lines, columns, squeeze=False).flatten()
    for axis in axes[count:]:
        axis.set_visible(False)
    return figure, axes[:count]


def finite(values) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 0) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def shorten(value: Any) -> Any:
    """A row cut to what a sample shows: long strings, lists and mappings shortened, saying how much was left."""
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + f" [... {len(value) - MAX_TEXT} more characters]"
    if isinstance(value, list):
        items = [shorten(v) for v in value[:MAX_ITEMS]]
        return items + ([f"[... {len(value) - MAX_ITEMS} more items]"] if len(value) > MAX_ITEMS else [])
    if isinstance(value, dict):
        items = {str(k): shorten(v) for k, v in islice(value.items(), MAX_ITEMS)}
        if len(value) > MAX_ITEMS:
            items["..."] = f"{len(value) - MAX_ITEMS} more entries"
        return items
    return value


def pretty(value: Any) -> str:
    return f"<pre>{esc(json.dumps(shorten(value), indent=1, ensure_ascii=False, default=str))}</pre>"


class Report:
    """Sections of the page, and the figures written for them."""

    def __init__(self, output: Path):
        self.output = output
        self.sections: list[tuple[str, str, str]] = []  # (id, title, body html)
        self.figures: list[str] = []

    def section(self, key: str, title: str, body: str) -> None:
        self.sections.append((key, title, body))

    def image(self, figure, name: str, alt: str) -> str:
        path = self.output / name
        figure.savefig(path, format="png")
        self.figures.append(name)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        image = f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'
        return f"<figure>{image}<figcaption>{esc(name)}</figcaption></figure>"


# Sections


def funnel_section(report: Report, stages: list[StageRun]) -> None:
    rows = [s for s in stages if "rows_in" in s.manifest or "rows_out" in s.manifest]
    if not rows:
        return
    labels = [s.name for s in rows]
    rows_in = [s.manifest.get("rows_in") or 0 for s in rows]
    rows_out = [s.manifest.get("rows_out") for s in rows]
    reasons = sorted({reason for s in rows for reason in (s.manifest.get("dropped") or {})})
    figure = new_figure(11 if reasons else 7, 1.2 + 0.45 * len(rows))
    axes = figure.subplots(1, 2 if reasons else 1, squeeze=False)[0]
    positions = list(range(len(rows)))
    axes[0].barh([p - 0.2 for p in positions], rows_in, height=0.4, label="rows in", color="#9ecae1")
    axes[0].barh(
        [p + 0.2 for p in positions], [v or 0 for v in rows_out], height=0.4, label="rows out", color="#3182bd"
    )
    axes[0].set_yticks(positions, labels)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("rows")
    axes[0].set_title("Rows per stage")
    axes[0].legend(loc="best", fontsize="small")
    if reasons:
        left = [0] * len(rows)
        colors = figure_colors(len(reasons))
        for reason, color in zip(reasons, colors):
            counts = [(s.manifest.get("dropped") or {}).get(reason, 0) for s in rows]
            axes[1].barh(positions, counts, left=left, label=reason, color=color)
            left = [a + b for a, b in zip(left, counts)]
        axes[1].set_yticks(positions, labels)
        axes[1].invert_yaxis()
        axes[1].set_xlabel("rows removed")
        axes[1].set_title("Removed per reason")
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    body = report.image(figure, "funnel.png", "rows in and out per stage, and rows removed per reason")
    lines = []
    for s in rows:
        units = s.manifest.get("row_units") or {}
        dropped = s.manifest.get("dropped") or {}
        lines.append(
            [
                s.name,
                number(s.manifest.get("rows_in")),
                number(s.manifest.get("rows_out")),
                " -> ".join(units[side] for side in ("in", "out") if side in units),  # a training stage: "in" only
                ", ".join(f"{reason} {count:,}" for reason, count in sorted(dropped.items())),
            ]
        )
    body += table(["Stage", "Rows in", "Rows out", "Units", "Removed per reason"], lines, numeric={1, 2})
    report.section("funnel", "Funnel", body)


def figure_colors(count: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def tokens_time_section(report: Report, stages: list[StageRun]) -> None:
    if not stages:
        return
    labels = [s.name for s in stages]
    tokens_in = [s.manifest.get("tokens_in") or 0 for s in stages]
    tokens_out = [s.manifest.get("tokens_out") or 0 for s in stages]
    seconds = [s.manifest.get("wall_seconds") or 0 for s in stages]
    positions = list(range(len(stages)))
    figure = new_figure(11, 1.2 + 0.45 * len(stages))
    tokens, time = figure.subplots(1, 2)
    tokens.barh([p - 0.2 for p in positions], tokens_in, height=0.4, label="tokens in", color="#a1d99b")
    tokens.barh([p + 0.2 for p in positions], tokens_out, height=0.4, label="tokens out", color="#31a354")
    tokens.set_title("Tokens per stage")
    tokens.set_xlabel("tokens")
    tokens.legend(loc="best", fontsize="small")
    time.barh(positions, seconds, color="#fd8d3c")
    time.set_title("Time per stage")
    time.set_xlabel("seconds (summed over every run of the stage)")
    for axis in (tokens, time):
        axis.set_yticks(positions, labels)
        axis.invert_yaxis()
    body = report.image(figure, "tokens-time.png", "tokens in and out, and seconds, per stage")
    lines = [
        [
            s.name,
            number(s.manifest.get("tokens_in")),
            number(s.manifest.get("tokens_out")),
            number(s.manifest.get("wall_seconds"), 1),
            number(s.manifest.get("gpu_hours"), 4),
            ", ".join(s.manifest.get("devices") or []),
            s.manifest.get("finished_at") or "",
        ]
        for s in stages
    ]
    headers = ["Stage", "Tokens in", "Tokens out", "Seconds", "GPU hours", "Devices", "Finished at"]
    body += table(headers, lines, numeric={1, 2, 3, 4})
    report.section("tokens-time", "Tokens and time per stage", body)


def cost_section(report: Report, stages: list[StageRun], price: float) -> None:
    if not stages:
        return
    from scalequest.cost import cost_table

    rows = cost_table([s.manifest for s in stages], price)
    lines = [
        [r["phase"], number(r["samples"]), f"{r['gpu_hours']:.4f}", f"{r['cost']:.2f}", f"{r['wall_hours']:.4f}"]
        + [r["devices"]]
        for r in rows
    ]
    headers = ["Phase", "Samples", "GPU hours", f"Cost (${price:.2f}/GPU-hour)", "Wall hours", "Devices"]
    body = (
        f"<p>At ${price:.2f} per GPU-hour, in the layout of the paper's Table 4 (as <code>scalequest cost</code>).</p>"
    )
    report.section("cost", "Cost", body + table(headers, lines, numeric={1, 2, 3, 4}))


def difficulty_section(report: Report, stages: list[StageRun]) -> None:
    from scalequest.stages.difficulty_label import BUCKETS

    panels = []  # (title, before, after, rule)
    for s in stages:
        if s.command != "filter-difficulty":
            continue
        by_generator = s.manifest.get("by_generator")
        if isinstance(by_generator, dict) and by_generator:
            for generator, entry in by_generator.items():
                title = f"{s.name}: {generator or '(no generator)'}"
                panels.append((title, entry.get("before") or {}, entry.get("after") or {}, entry.get("rule")))
        elif isinstance(s.manifest.get("histogram"), dict) and "before" in s.manifest["histogram"]:
            hist = s.manifest["histogram"]
            panels.append((s.name, hist.get("before") or {}, hist.get("after") or {}, None))
    if not panels:
        return
    figure, axes = panel_grid(len(panels))
    positions = list(range(len(BUCKETS)))
    for axis, (title, before, after, _) in zip(axes, panels):
        axis.bar(
            [p - 0.2 for p in positions], [before.get(b, 0) for b in BUCKETS], 0.4, label="before", color="#bcbddc"
        )
        axis.bar([p + 0.2 for p in positions], [after.get(b, 0) for b in BUCKETS], 0.4, label="after", color="#756bb1")
        axis.set_xticks(positions, [b.replace("_", " ") for b in BUCKETS], fontsize="small")
        axis.set_title(title, fontsize="small")
        axis.set_ylabel("questions")
        axis.legend(fontsize="small")
    body = report.image(figure, "difficulty.png", "difficulty score buckets before and after the filter, per generator")
    rows = [
        [title, sum(before.values()), sum(after.values()), json.dumps(rule) if rule is not None else ""]
        for title, before, after, rule in panels
    ]
    body += "<p>Buckets are predicted fail rates in [0, 0.2), [0.2, 0.4), ... [0.8, 1].</p>"
    body += table(["Stage: generator", "Before", "After", "Rule"], rows, numeric={1, 2})
    report.section("difficulty", "Difficulty before and after the filter", body)


def reward_section(report: Report, stages: list[StageRun], max_rows: int) -> None:
    chosen: list[float] = []
    others: list[float] = []
    margins: list[float] = []
    questions = 0
    for s in stages:
        if s.command != "reward-select":
            continue
        for row in sample_rows(s.folder, max_rows):
            candidates = row.get("candidate_scores")
            if not isinstance(candidates, dict) or not finite([row.get("reward_score")]):
                continue
            questions += 1
            best = float(row["reward_score"])
            rest = finite(score for rid, score in candidates.items() if rid != row.get("response_id"))
            chosen.append(best)
            others.extend(rest)
            if rest:
                margins.append(best - max(rest))
    if not questions:
        return
    figure = new_figure(11, 3.6)
    scores, gaps = figure.subplots(1, 2)
    low, high = min(chosen + others), max(chosen + others)
    edges = [low + (high - low) * i / 30 for i in range(31)] if high > low else 1
    scores.hist(others, bins=edges, alpha=0.6, label="other responses", color="#fc9272")
    scores.hist(chosen, bins=edges, alpha=0.6, label="chosen", color="#de2d26")
    scores.set_title("Reward scores")
    scores.set_xlabel("reward score")
    scores.set_ylabel("responses")
    scores.legend(fontsize="small")
    if margins:
        gaps.hist(margins, bins=30, color="#3182bd")
    gaps.set_title("Margin of the chosen response (chosen - best other)")
    gaps.set_xlabel("score margin")
    gaps.set_ylabel("questions")
    body = report.image(figure, "reward-scores.png", "reward score distributions and the chosen response's margin")
    stats = [
        ["questions read", questions],
        ["responses scored", len(chosen) + len(others)],
        ["mean chosen score", f"{statistics.fmean(chosen):.4f}"],
        ["mean margin", f"{statistics.fmean(margins):.4f}" if margins else "-"],
        ["questions with one response", questions - len(margins)],
    ]
    report.section("reward", "Reward scores", body + table(["", "value"], stats, numeric={1}))


def response_length_section(report: Report, stages: list[StageRun], max_rows: int) -> None:
    lengths: dict[str, list[float]] = {}
    finished: dict[str, tuple[int, int]] = {}
    for s in stages:
        if s.command != "generate-responses":
            continue
        values = finite(row.get("completion_tokens") for row in sample_rows(s.folder, max_rows))
        if values:
            lengths[s.name] = values
            counts = s.manifest.get("counts") or {}
            finished[s.name] = (counts.get("finish_length", 0), counts.get("responses_generated", 0))
    if not lengths:
        return
    figure = new_figure(7, 3.6)
    axis = figure.subplots()
    every = [v for values in lengths.values() for v in values]
    low, high = min(every), max(every)
    edges = [low + (high - low) * i / 30 for i in range(31)] if high > low else 1
    for (name, values), color in zip(lengths.items(), figure_colors(len(lengths))):
        axis.hist(values, bins=edges, alpha=0.7 if len(lengths) > 1 else 1.0, label=name, color=color)
    axis.set_title("Response length")
    axis.set_xlabel("completion tokens")
    axis.set_ylabel("responses")
    if len(lengths) > 1:
        axis.legend(fontsize="small")
    body = report.image(figure, "response-length.png", "distribution of response lengths in tokens")
    rows = []
    for name, values in lengths.items():
        cut, generated = finished[name]
        ordered = sorted(values)
        rows.append(
            [
                name,
                len(values),
                f"{statistics.fmean(values):.1f}",
                f"{statistics.median(values):.0f}",
                f"{ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]:.0f}",
                f"{ordered[-1]:.0f}",
                f"{cut:,} of {generated:,}" if generated else "",
            ]
        )
    headers = ["Stage", "Responses read", "Mean", "Median", "95th pct", "Max", "Cut at the token limit"]
    report.section("response-length", "Response length", body + table(headers, rows, numeric={1, 2, 3, 4, 5}))


def evaluation_section(report: Report, stages: list[StageRun]) -> None:
    summaries = {
        s.name: [e for e in s.manifest["summary"] if isinstance(e, dict) and "benchmark" in e]
        for s in stages
        if s.command == "evaluate" and isinstance(s.manifest.get("summary"), list)
    }
    summaries = {name: entries for name, entries in summaries.items() if entries}
    if not summaries:
        return
    benchmarks = list(dict.fromkeys(e["benchmark"] for entries in summaries.values() for e in entries))
    figure = new_figure(max(6.0, 1.0 + 1.2 * len(benchmarks) * max(1.0, len(summaries) / 2)), 3.8)
    axis = figure.subplots()
    width = 0.8 / len(summaries)
    for i, ((name, entries), color) in enumerate(zip(summaries.items(), figure_colors(len(summaries)))):
        accuracy = {e["benchmark"]: e.get("accuracy") or 0 for e in entries}
        positions = [b + (i - (len(summaries) - 1) / 2) * width for b in range(len(benchmarks))]
        bars = axis.bar(positions, [accuracy.get(b, 0) for b in benchmarks], width, label=name, color=color)
        axis.bar_label(bars, fmt="%.1f", fontsize="small")
    axis.set_xticks(range(len(benchmarks)), benchmarks)
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 105)
    axis.set_title("Evaluation accuracy per benchmark")
    if len(summaries) > 1:
        axis.legend(fontsize="small")
    body = report.image(figure, "evaluation.png", "evaluation accuracy per benchmark")
    rows = [
        [name, e["benchmark"], number(e.get("n"))]
        + [number(e.get(k)) for k in ("accuracy", "mean_response_tokens", "no_answer", "grading_timeouts")]
        + [e.get("source", "")]
        for name, entries in summaries.items()
        for e in entries
    ]
    headers = ["Stage", "Benchmark", "n", "Accuracy (%)", "Mean response tokens", "No answer", "Grading time-outs"]
    report.section("evaluation", "Evaluation", body + table(headers + ["Graded copy"], rows, numeric={2, 3, 4, 5, 6}))


def curve(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    points = [
        (entry.get("step", i), entry[key])
        for i, entry in enumerate(history)
        if isinstance(entry, dict) and finite([entry.get(key)])
    ]
    return [float(x) for x, _ in points], [float(y) for _, y in points]


def margin_key(history: list[dict]) -> str | None:
    keys = {key for entry in history if isinstance(entry, dict) for key in entry}
    return next((key for key in sorted(keys) if key.endswith("rewards/margins") and not key.startswith("eval")), None)


def training_sections(report: Report, stages: list[StageRun]) -> None:
    trained = [s for s in stages if isinstance(s.manifest.get("log_history"), list)]
    losses = [
        (s, curve(s.manifest["log_history"], "loss"), curve(s.manifest["log_history"], "eval_loss")) for s in trained
    ]
    losses = [entry for entry in losses if entry[1][0] or entry[2][0]]
    if losses:
        figure, axes = panel_grid(len(losses))
        for axis, (s, (steps, loss), (eval_steps, eval_loss)) in zip(axes, losses):
            if steps:
                axis.plot(steps, loss, marker="." if len(steps) < 30 else None, label="train loss")
            if eval_steps:
                axis.plot(eval_steps, eval_loss, marker="o", label="eval loss")
            axis.set_title(s.name, fontsize="small")
            axis.set_xlabel("step")
            axis.set_ylabel("loss")
            axis.legend(fontsize="small")
        body = report.image(figure, "training-loss.png", "training loss per step, per training stage")
        rows = [
            [
                s.name,
                number(s.manifest.get("steps")),
                number(s.manifest.get("first_logged_loss")),
                number(s.manifest.get("last_logged_loss")),
                number(s.manifest.get("train_loss")),
            ]
            for s, _, _ in losses
        ]
        headers = ["Stage", "Steps", "First logged loss", "Last logged loss", "Mean train loss"]
        report.section("training", "Training loss", body + table(headers, rows, numeric={1, 2, 3, 4}))
    margins = []
    for s in trained:
        key = margin_key(s.manifest["log_history"])
        if key:
            accuracy_key = key.replace("margins", "accuracies")
            margins.append((s, curve(s.manifest["log_history"], key), curve(s.manifest["log_history"], accuracy_key)))
    if margins:
        figure = new_figure(5 * len(margins), 3.4)
        axes = figure.subplots(1, len(margins), squeeze=False)[0]
        for axis, (s, (steps, margin), (accuracy_steps, accuracy)) in zip(axes, margins):
            axis.plot(steps, margin, marker="." if len(steps) < 30 else None, color="#3182bd", label="reward margin")
            axis.axhline(0, color="#999999", linewidth=0.8)
            axis.set_title(s.name, fontsize="small")
            axis.set_xlabel("step")
            axis.set_ylabel("chosen - rejected reward")
            if accuracy_steps:
                twin = axis.twinx()
                twin.plot(accuracy_steps, accuracy, color="#e6550d", linestyle="--", label="reward accuracy")
                twin.set_ylim(-0.05, 1.05)
                twin.set_ylabel("reward accuracy")
        body = report.image(figure, "qpo-margins.png", "DPO reward margins (and accuracies) per step")
        rows = [[s.name, len(steps), number(margin[-1]) if margin else ""] for s, (steps, margin), _ in margins]
        body += table(["Stage", "Logged steps", "Last margin"], rows, numeric={1, 2})
        report.section("qpo-margins", "QPO reward margins", body)


def samples_section(report: Report, stages: list[StageRun], max_rows: int) -> None:
    parts = []
    for s in stages:
        rng = random.Random(s.name)
        kept = sample_rows(s.folder, max_rows)
        removed = sample_removed(s.folder, max_rows) if (s.folder / io.REMOVED_DIR).is_dir() else []
        dropped = s.manifest.get("dropped") or {}
        if not kept and not removed:
            continue
        body = [f"<summary><h3>{esc(s.name)}</h3></summary>"]
        if kept:
            body.append(f"<h4>Kept ({SAMPLES if len(kept) >= SAMPLES else len(kept)} of {len(kept):,} rows read)</h4>")
            body.extend(pretty(row) for row in rng.sample(kept, min(SAMPLES, len(kept))))
        by_reason: dict[str, list[dict]] = {}
        for entry in removed:
            by_reason.setdefault(str(entry.get("reason")), []).append(entry)
        for reason in sorted(set(by_reason) | set(dropped)):
            entries = by_reason.get(reason, [])
            total = f"{dropped[reason]:,} removed" if reason in dropped else "removed"
            body.append(f'<h4>Removed: <span class="reason">{esc(reason)}</span> ({esc(total)})</h4>')
            if not entries:
                body.append(f"<p>None among the {len(removed):,} removed rows read (or the stage kept none).</p>")
            for entry in rng.sample(entries, min(SAMPLES, len(entries))):
                body.append(
                    '<div class="removed">'
                    f"<p>id <code>{esc(entry.get('id'))}</code></p><p>evidence</p>{pretty(entry.get('evidence'))}"
                    f"<details><summary>row</summary>{pretty(entry.get('row'))}</details></div>"
                )
        parts.append(f'<details class="stage" open>{"".join(body)}</details>')
    if parts:
        note = (
            f"<p>Rows drawn at random from at most {max_rows:,} rows read per stage (spread over its shards), "
            "removed rows with the evidence each decision rested on.</p>"
        )
        report.section("samples", "Samples of kept and removed rows", note + "".join(parts))


# The page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f4f4f4; }
figure { margin: .8rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .8rem; color: #777; }
pre { background: #f7f7f7; padding: .5rem; overflow-x: auto; white-space: pre-wrap; word-break: break-word;
      font-size: .8rem; max-height: 28rem; }
nav a { margin-right: .8rem; } .removed { border-left: 3px solid #de2d26; padding-left: .6rem; margin: .6rem 0; }
.warning { color: #a50f15; } footer { margin-top: 3rem; font-size: .8rem; color: #777; }
details.stage > summary h3 { display: inline; }
"""

# Records image load failures and script errors in the footer (read back by a browser test).
CHECK_SCRIPT = """
(function () {
  var errors = [];
  window.addEventListener("error", function (event) {
    var target = event.target;
    var failed = target && target !== window && target.tagName;
    errors.push(failed ? "failed to load " + target.tagName : String(event.message));
  }, true);
  window.addEventListener("load", function () {
    var images = document.images, broken = 0;
    for (var i = 0; i < images.length; i++) {
      if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
    }
    var check = document.getElementById("page-check");
    check.setAttribute("data-images", String(images.length));
    check.setAttribute("data-broken", String(broken));
    check.setAttribute("data-errors", String(errors.length));
    check.textContent = "page check: " + images.length + " images, " + broken + " not loaded, " + errors.length +
      " errors" + (errors.length ? ": " + errors.join("; ") : "");
  });
})();
"""

# No fetch of any kind: images only from data URIs, the inline style and script only.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def render_page(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
    nav = " ".join(f'<a href="#{esc(key)}">{esc(name)}</a>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{esc(key)}">\n<h2>{esc(name)}</h2>\n{html_}\n</section>' for key, name, html_ in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style>
<script>{CHECK_SCRIPT}</script>
</head>
<body>
<h1>{esc(title)}</h1>
{intro}
<nav>{nav}</nav>
{body}
<footer><p id="page-check" data-images="" data-broken="" data-errors="">page check: not run</p></footer>
</body>
</html>
"""


def write_report(
    run_dir: str | Path, output: str | Path | None = None, price: float | None = None, max_rows: int = MAX_ROWS
) -> Path:
    """Write OUTPUT/report.html (default RUN_DIR/report) and its PNG figures; return the page's path."""
    from scalequest.cost import PAPER_PRICE_PER_GPU_HOUR

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise io.DataError(f"run folder {run_dir} does not exist")
    output = Path(output) if output is not None else run_dir / REPORT_DIR
    stages, warnings = find_stages(run_dir, skip=output.resolve())
    if not stages:
        raise io.DataError(f"{run_dir} holds no finished stage (no manifest.json in it or in its sub-folders)")
    price = PAPER_PRICE_PER_GPU_HOUR if price is None else price
    output.mkdir(parents=True, exist_ok=True)
    report = Report(output)
    funnel_section(report, stages)
    tokens_time_section(report, stages)
    cost_section(report, stages, price)
    difficulty_section(report, stages)
    reward_section(report, stages, max_rows)
    response_length_section(report, stages, max_rows)
    evaluation_section(report, stages)
    training_sections(report, stages)
    samples_section(report, stages, max_rows)
    for name in FIGURES:
        if name not in report.figures:
            (output / name).unlink(missing_ok=True)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    intro = (
        f"<p>{len(stages)} finished stage{'s' if len(stages) != 1 else ''} "
        f"under <code>{esc(run_dir.resolve())}</code>: "
        + ", ".join(f"<code>{esc(s.name)}</code>" for s in stages)
        + f". Generated {esc(generated)}.</p>"
        + "".join(f'<p class="warning">{esc(w)}</p>' for w in warnings)
    )
    page = render_page(f"ScaleQuest report: {run_dir.resolve().name}", intro, report.sections)
    path = output / REPORT_FILE
    io.atomic_write_text(path, page)
    return path
