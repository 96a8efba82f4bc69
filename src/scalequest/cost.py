"""What a run cost, in the layout of the paper's Table 4: phase, samples, GPU-hours, dollars.

Every stage's manifest records its GPU-hours (shard seconds x GPUs in use, summed over every run that
contributed, resumes included), so the table can be built for any run folder at any time.
"""

from __future__ import annotations

from pathlib import Path

from scalequest import io

# The paper's run: $680.8 for 522.9 A100-40G hours.
PAPER_PRICE_PER_GPU_HOUR = round(680.8 / 522.9, 2)


def stage_manifests(run_dir: Path) -> list[dict]:
    """Manifests of the finished stages under `run_dir` (one folder per stage), in pipeline order."""
    from scalequest.pipeline import STAGES

    manifests = [m for m in (io.read_manifest(p) for p in sorted(run_dir.iterdir()) if p.is_dir()) if m]
    order = list(STAGES)
    return sorted(manifests, key=lambda m: order.index(m["stage"]) if m["stage"] in order else len(order))


def cost_rows(run_dir: str | Path, price_per_gpu_hour: float = PAPER_PRICE_PER_GPU_HOUR) -> list[dict]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise io.DataError(f"run folder {run_dir} does not exist")
    manifests = stage_manifests(run_dir)
    if not manifests:
        raise io.DataError(f"run folder {run_dir} holds no finished stage (no */manifest.json)")
    return cost_table(manifests, price_per_gpu_hour)


def cost_table(manifests: list[dict], price_per_gpu_hour: float = PAPER_PRICE_PER_GPU_HOUR) -> list[dict]:
    """One row per phase of these manifests (in the order given), then the total."""
    from scalequest.pipeline import STAGES

    rows: dict[str, dict] = {}
    for manifest in manifests:
        phase = STAGES[manifest["stage"]].phase if manifest["stage"] in STAGES else manifest["stage"]
        row = rows.setdefault(
            phase, {"phase": phase, "stages": [], "samples": 0, "gpu_hours": 0.0, "wall_hours": 0.0, "devices": set()}
        )
        row["stages"].append(manifest["stage"])
        # Samples of a phase: rows its last stage produced (for training, the examples trained on).
        row["samples"] = manifest.get("rows_out", manifest.get("rows_in", 0))
        row["gpu_hours"] += manifest.get("gpu_hours", 0.0)
        row["wall_hours"] += manifest.get("wall_seconds", 0.0) / 3600
        row["devices"].update(manifest.get("devices", []))
    table = list(rows.values())
    total = {
        "phase": "Total",
        "stages": [],
        "samples": "",
        "gpu_hours": sum(r["gpu_hours"] for r in table),
        "wall_hours": sum(r["wall_hours"] for r in table),
        "devices": set().union(*(r["devices"] for r in table)),
    }
    for row in table + [total]:
        row["cost"] = row["gpu_hours"] * price_per_gpu_hour
        row["devices"] = ", ".join(sorted(row["devices"])) or "-"
    return table + [total]


def cost_markdown(rows: list[dict], price_per_gpu_hour: float = PAPER_PRICE_PER_GPU_HOUR) -> str:
    lines = [
        f"| Phase | Samples | GPU hours | Cost (${price_per_gpu_hour:.2f}/GPU-hour) | Wall hours | Devices |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['phase']} | {row['samples']} | {row['gpu_hours']:.4f} | {row['cost']:.2f} | "
            f"{row['wall_hours']:.4f} | {row['devices']} |"
        )
    return "\n".join(lines) + "\n"
