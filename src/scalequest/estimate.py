"""What a big run would cost, projected from a small one: `scalequest estimate -c PIPELINE.yaml --pairs N`.

A pilot (the pipeline as configured, usually with a small `generate-questions.num`) is run, or read when it has
finished. Each stage's manifest gives its survival (rows out / rows in) and its tokens. The stages whose work grows
with the dataset (`pipeline.grows_with_dataset`: generation and every stage its output feeds) are scaled by N / the
pilot's final pairs, which is the same as working back from N pairs through every stage's survival; the others
(QFT, QPO, the labelled set, the trained scorers, evaluation) cost what the pilot says. Tokens become GPU-hours
through a per-GPU throughput table and the size of each stage's model, read from its config.json:

- generated tokens: vLLM's published output throughput of a 7B model on one GPU, scaled by 7.25B / the model's
  parameters (decoding reads every weight once per step, so it is bound by memory and model size);
- read tokens (prompts, scored texts): 2 x parameters FLOPs each at `prefill_mfu` of the GPU's dense bf16 peak;
- trained tokens: 6 x parameters FLOPs each at `training_mfu` of that peak.

The table ships with A100 and H100 figures and their sources; a YAML file given with --throughput overrides any
of them. Stages that run on CPUs only (language filter, decontamination, export) cost no GPU-hours.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import Field

from scalequest import io
from scalequest.config import ConfigError, Section, build_config, deep_merge, read_yaml
from scalequest.cost import PAPER_PRICE_PER_GPU_HOUR

LAMBDA_VLLM = "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md"


class GPU(Section):
    decode_tokens_per_second: float = Field(
        ..., gt=0, description="Output tokens/s of a `reference_parameters` model under vLLM on one such GPU."
    )
    reference_parameters: float = Field(7.25e9, gt=0, description="Parameters of the model that figure is for.")
    peak_tflops: float = Field(..., gt=0, description="Dense bf16 peak of the GPU, in TFLOPS (its datasheet).")
    source: str = Field(..., description="Where the figures come from.")


class ThroughputTable(Section):
    gpus: dict[str, GPU] = Field(..., description="GPU type -> its figures.")
    prefill_mfu: float = Field(
        0.5, gt=0, le=1, description="Share of the bf16 peak reached when reading prompts and scored texts."
    )
    training_mfu: float = Field(0.4, gt=0, le=1, description="Share of the bf16 peak reached when training.")


# Mistral-7B-Instruct-v0.3 (7.25B, bf16) on one 80GB SXM GPU, vLLM 0.5.4, 320 prompts at once: Lambda's
# table "Tensor Parallel v.s. Data Parallel" (output tokens/s / ms per token). Peaks: NVIDIA's A100 and H100 SXM
# datasheets, dense bf16 tensor cores.
DEFAULT_THROUGHPUT = {
    "gpus": {
        "A100": {
            "decode_tokens_per_second": 1591.4,
            "peak_tflops": 312,
            "source": f"{LAMBDA_VLLM} (1xA100-80GB-SXM, Mistral-7B-Instruct-v0.3); A100 datasheet (312 TFLOPS bf16)",
        },
        "H100": {
            "decode_tokens_per_second": 3281.19,
            "peak_tflops": 989,
            "source": f"{LAMBDA_VLLM} (1xH100-80GB-SXM, Mistral-7B-Instruct-v0.3); H100 SXM datasheet (989 TFLOPS "
            "bf16)",
        },
    }
}


def load_throughput(path: str | Path | None) -> ThroughputTable:
    data = DEFAULT_THROUGHPUT if path is None else deep_merge(DEFAULT_THROUGHPUT, read_yaml(path))
    return build_config(ThroughputTable, data, str(path or "the shipped throughput table"))


def parameters(config: dict) -> float | None:
    """Parameters of a decoder from its config.json values (attention with grouped KV heads, a gated MLP,
    embeddings tied or not); None when the config lacks the sizes."""
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    vocab = config.get("vocab_size")
    if not (hidden and layers and vocab):
        return None
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * (config.get("intermediate_size") or 4 * hidden)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return float(layers * (attention + mlp) + embeddings)


@lru_cache(maxsize=None)  # the stages of a pipeline share their models
def model_parameters(name: str, revision: str | None = None) -> float | None:
    """Parameters of a model named as a stage config names it (embedded, a folder, an adapter folder, a Hub id);
    None when its config.json cannot be read (a remote server's model, offline without a cached copy)."""
    from scalequest.models import resolve_model

    try:
        path = Path(resolve_model(name, revision))
    except Exception:  # noqa: BLE001 - an unknown model leaves its GPU-hours unknown, said in the table
        path = Path(name)
    if (path / "adapter_config.json").is_file():  # LoRA adapters: the base model computes
        return model_parameters(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
    if (path / "config.json").is_file():
        return parameters(json.loads((path / "config.json").read_text()))
    try:
        from huggingface_hub import hf_hub_download

        return parameters(json.loads(Path(hf_hub_download(name, "config.json", revision=revision)).read_text()))
    except Exception:  # noqa: BLE001 - as above
        return None


def stage_parameters(manifest: dict) -> float | None:
    """Parameters of the largest model a stage ran (its engine, scorer or trained model)."""
    sizes = [model_parameters(m["model"], m.get("revision")) for m in manifest.get("models", {}).values()]
    known = [size for size in sizes if size]
    return max(known) if known else None


def gpu_hours(manifest: dict, kind: str, scale: float, params: float | None, gpu: GPU, table: ThroughputTable):
    """Projected GPU-hours of one stage (None when its model's size is unknown)."""
    tokens_in, tokens_out = manifest.get("tokens_in") or 0, manifest.get("tokens_out") or 0
    if not tokens_in and not tokens_out:
        return 0.0 if kind == "row-wise" else None  # a row-wise stage without a model runs on CPUs
    if params is None:
        return None
    flops = gpu.peak_tflops * 1e12
    if kind == "training":
        seconds = tokens_in * 6 * params / (table.training_mfu * flops)
    else:
        decode = gpu.decode_tokens_per_second * gpu.reference_parameters / params
        seconds = tokens_out / decode + tokens_in * 2 * params / (table.prefill_mfu * flops)
    return seconds * scale / 3600


def gpu_figures(table: ThroughputTable, gpu: str) -> GPU:
    if gpu not in table.gpus:
        raise ConfigError(f"unknown GPU {gpu!r}; the throughput table has {', '.join(table.gpus)}")
    return table.gpus[gpu]


def pilot_manifests(planned: list[tuple[str, object]]) -> list[tuple[str, dict]]:
    """(step, manifest) of every step of the pipeline; an unfinished step is an error."""
    manifests = []
    for name, config in planned:
        manifest = io.read_manifest(Path(config.output))
        if manifest is None:
            raise ConfigError(f"stage {name} has not finished under {config.output}; run the pilot first")
        manifests.append((name, manifest))
    return manifests


def estimate(
    manifests: list[tuple[str, dict]], pairs: int, gpu: str, table: ThroughputTable, price: float
) -> tuple[list[dict], int]:
    """One projected row per step, and the pilot's final pairs."""
    from scalequest.pipeline import STAGES, command_of, grows_with_dataset

    if pairs < 1:
        raise ConfigError(f"--pairs must be at least 1, not {pairs}")
    figures = gpu_figures(table, gpu)
    final = [
        m
        for name, m in manifests
        if grows_with_dataset(command_of(name)) and STAGES[command_of(name)].kind != "training"
    ]
    if not final:
        raise ConfigError("the pipeline has no stage that writes the dataset (generate-questions ... export)")
    pilot_pairs = final[-1].get("rows_out", 0)
    if pilot_pairs < 1:
        raise ConfigError(
            f"the pilot's last dataset stage ({final[-1]['stage']}) kept no rows, so nothing can be scaled; "
            "raise generate-questions.num"
        )
    rows = []
    for name, manifest in manifests:
        stage = STAGES[command_of(name)]
        grows = grows_with_dataset(stage.name)
        scale = pairs / pilot_pairs if grows else 1.0
        params = stage_parameters(manifest)
        hours = gpu_hours(manifest, stage.kind, scale, params, figures, table)
        rows_in, rows_out = manifest.get("rows_in", 0), manifest.get("rows_out", manifest.get("rows_in", 0))
        rows.append(
            {
                "stage": name,
                "phase": stage.phase,
                "grows": grows,
                "survival": rows_out / rows_in if rows_in and stage.kind == "row-wise" else None,
                "rows_in": round(rows_in * scale),
                "rows_out": round(rows_out * scale),
                "tokens_in": round((manifest.get("tokens_in") or 0) * scale),
                "tokens_out": round((manifest.get("tokens_out") or 0) * scale),
                "parameters": params,
                "gpu_hours": hours,
                "cost": None if hours is None else hours * price,
            }
        )
    return rows, pilot_pairs


def markdown(rows: list[dict], pairs: int, pilot_pairs: int, gpu: str, price: float, table: ThroughputTable) -> str:
    def number(value) -> str:
        return "?" if value is None else f"{value:,.2f}"

    lines = [
        f"Projection for {pairs:,} pairs on {gpu} at ${price:.2f}/GPU-hour, from a pilot of {pilot_pairs:,} pairs "
        f"(x{pairs / pilot_pairs:,.1f} for the stages that grow with the dataset).",
        "",
        "| Stage | Phase | Survival | Rows in | Tokens in | Tokens out | Model | GPU hours | Cost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        survival = "-" if row["survival"] is None else f"{row['survival']:.1%}"
        model = "-" if row["parameters"] is None else f"{row['parameters'] / 1e9:.2f}B"
        fixed = "" if row["grows"] else " (fixed)"
        lines.append(
            f"| {row['stage']}{fixed} | {row['phase']} | {survival} | {row['rows_in']:,} | {row['tokens_in']:,} | "
            f"{row['tokens_out']:,} | {model} | {number(row['gpu_hours'])} | {number(row['cost'])} |"
        )
    lines += ["", "| Phase | Samples | GPU hours | Cost |", "|---|---:|---:|---:|"]
    phases: dict[str, dict] = {}
    for row in rows:
        phase = phases.setdefault(row["phase"], {"samples": 0, "gpu_hours": 0.0, "cost": 0.0})
        phase["samples"] = row["rows_out"]  # what the phase's last stage produced
        for key in ("gpu_hours", "cost"):
            phase[key] = None if phase[key] is None or row[key] is None else phase[key] + row[key]
    for name, phase in phases.items():
        lines.append(f"| {name} | {phase['samples']:,} | {number(phase['gpu_hours'])} | {number(phase['cost'])} |")
    known = [row for row in rows if row["gpu_hours"] is not None]
    total_hours = sum(row["gpu_hours"] for row in known)
    lines.append(f"| Total | | {total_hours:,.2f} | {total_hours * price:,.2f} |")
    unknown = [row["stage"] for row in rows if row["gpu_hours"] is None]
    if unknown:
        lines += [
            "",
            f"?: the GPU-hours of {', '.join(unknown)} are unknown (a model without a readable config.json, or a "
            "training manifest without token counts); not in the total",
        ]
    lines += ["", f"Throughput ({gpu}): {table.gpus[gpu].source}"]
    return "\n".join(lines) + "\n"


def main(args) -> None:
    from scalequest.pipeline import load_pipeline, run_pipeline

    if not args.config:
        raise ConfigError("estimate needs a pipeline YAML: scalequest estimate -c pipeline.yaml --pairs N")
    table = load_throughput(args.throughput)
    gpu_figures(table, args.gpu)  # before a pilot runs for nothing
    if not args.no_pilot:
        run_pipeline(args.config, args.overrides, force=args.force)
    _, planned = load_pipeline(args.config, args.overrides)
    price = PAPER_PRICE_PER_GPU_HOUR if args.price is None else args.price
    rows, pilot_pairs = estimate(pilot_manifests(planned), args.pairs, args.gpu, table, price)
    print(markdown(rows, args.pairs, pilot_pairs, args.gpu, price, table), end="")
