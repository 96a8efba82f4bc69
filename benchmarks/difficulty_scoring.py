"""Difficulty scoring throughput: the stage's scorer vs one question at a time (the official code's way).

Both score the same questions with the same model object. The baseline is what the official code does: a
transformers `pipeline("text-classification")` called on one question after another (batch size 1). The
stage is `ScoreDifficulty.process` on one shard: questions tokenized, sorted by length, scored in batches
of `batch_size` (right padding), with the stage's default batch size for the device unless --batch-sizes
is given.

The model is the embedded SmolLM2-135M-Instruct turned into a 1-output regressor (a random head: fine
for timing), or with --tiny a tiny random Llama regressor. Questions are GSM8K train questions when
../shared/data is present, else generated text.

    python benchmarks/difficulty_scoring.py                                  # stage defaults, 48 questions
    python benchmarks/difficulty_scoring.py --dtypes float32,bfloat16 --batch-sizes 1,4,16   # the sweep

Targets: >= 5x on a GPU, >= 1.0x on a CPU. Runs alternate (baseline first, then stage first, ...) so load
drifts on a busy machine hit both sides; the ratio printed is of the median rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))


def score_head_from_embedded(target: Path) -> Path:
    """The embedded chat model with a random 1-output head (a regressor, or a reward model: the same shape),
    saved once as a model folder; the head is untrained, which is fine for timing."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scalequest.models import resolve_model

    source = resolve_model("embedded")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, problem_type="regression")
    model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def tiny_score_head(target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    from conftest import build_tiny_model_dir

    return build_tiny_model_dir(target, head="classifier")


def add_common_arguments(parser: argparse.ArgumentParser, head: str) -> None:
    """The options both scoring benchmarks take: the tiny model (a random Llama `head`, e.g. "regressor"), stage
    batch sizes, device, threads, model cache."""
    parser.add_argument(
        "--tiny", action="store_true", help=f"use a tiny random Llama {head} instead of the embedded SmolLM2"
    )
    parser.add_argument(
        "--batch-sizes", default="", help="comma-separated stage batch sizes (default: the stage's default)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--cache", type=Path, default=Path("/tmp/scalequest-bench"), help="where the converted model is kept"
    )


def score_model(args: argparse.Namespace, kind: str) -> Path:
    """Set torch's threads and give the 1-output model folder to time (tiny random, or the embedded one)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        return tiny_score_head(args.cache / f"tiny-{kind}")
    return score_head_from_embedded(args.cache / f"smollm2-135m-{kind}")


def alternate(runs: list[tuple[str, Callable[[], object]]], rounds: int, count: int, unit: str) -> None:
    """Time each (name, run) `rounds` times, order reversed every other round so a busy machine's load drifts
    hit every side, and print each median rate with its ratio to the first run's (the baseline)."""
    rates: dict[str, list[float]] = {name: [] for name, _ in runs}
    for round_index in range(rounds):
        for name, run in reversed(runs) if round_index % 2 else runs:
            started = time.perf_counter()
            run()
            rates[name].append(count / (time.perf_counter() - started))
            print(f"  round {round_index + 1}: {name}: {rates[name][-1]:.2f} {unit}/s", flush=True)
    baseline = statistics.median(rates[runs[0][0]])
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"{name:>20}: {median:7.2f} {unit}/s  (runs: {', '.join(f'{v:.2f}' for v in values)})  ratio "
            f"{median / baseline:.2f}x"
        )


def load_questions(count: int) -> list[str]:
    path = REPO.parent / "shared" / "data" / "train" / "gsm8k_train.jsonl"
    questions: list[str] = []
    if path.is_file():
        with path.open() as lines:
            for line in lines:
                questions.append(json.loads(line)["question"])
                if len(questions) == count:
                    break
    words = "a train leaves at noon and travels sixty miles per hour for two hours how far does it go".split()
    while len(questions) < count:  # no shared data: varied lengths from a fixed word list
        i = len(questions)
        questions.append(" ".join(words * (1 + i % 4))[: 60 + 17 * (i % 11)] + "?")
    return questions


def one_at_a_time(pipe, questions: list[str]) -> list[float]:
    """The official code's loop: the text-classification pipeline on one question at a time."""
    return [pipe(question)[0]["score"] for question in questions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=48, help="questions scored per run")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of both methods")
    parser.add_argument("--dtypes", default="auto", help="comma-separated dtypes: auto, bfloat16, float16, float32")
    add_common_arguments(parser, "regressor")
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    from scalequest.stage import Shard
    from scalequest.stages.filter_difficulty import ScoreDifficulty, ScoreDifficultyConfig

    model_dir = score_model(args, "difficulty")
    questions = load_questions(args.questions)
    shard = Shard(0, [{"id": f"q{i}", "question": q} for i, q in enumerate(questions)])
    sizes = [int(s) for s in args.batch_sizes.split(",") if s] or [None]

    for dtype in args.dtypes.split(","):
        stages = {}
        for size in sizes:
            stage = ScoreDifficulty(
                ScoreDifficultyConfig(
                    input="unused",
                    output="unused",
                    regressor={"model": str(model_dir), "dtype": dtype, "device": args.device, "batch_size": size},
                    progress=False,
                )
            )
            if stages:  # one model object for every variant and for the baseline
                first = next(iter(stages.values()))
                stage.model, stage.tokenizer = first.model, first.tokenizer
                stage.batch_size = size or first.batch_size
            else:
                stage.setup()
            stages[f"stage, batch {stage.batch_size}"] = stage
        first = next(iter(stages.values()))
        model, tokenizer = first.model, first.tokenizer
        pipe = pipeline(
            "text-classification", model=model, tokenizer=tokenizer, device=model.device, function_to_apply="none"
        )
        lengths = [len(tokenizer(q)["input_ids"]) for q in questions]
        print(
            f"\nmodel {model_dir.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, "
            f"{model.dtype}, {model.device}), "
            f"torch threads {torch.get_num_threads()}, {len(questions)} questions, tokens "
            f"{min(lengths)}-{max(lengths)} "
            f"(mean {sum(lengths) / len(lengths):.0f})"
        )

        # Warm-up (first calls allocate and pick kernels), and a check that both give the same scores.
        reference = one_at_a_time(pipe, questions[:8])
        for name, stage in stages.items():
            got = [row["difficulty"] for row in stage.process(Shard(0, shard.rows[:8])).rows]
            print(
                f"{name}: max |score difference| vs one at a time on 8 questions = "
                f"{max(abs(a - b) for a, b in zip(got, reference)):.2e}"
            )

        runs = [("one at a time", lambda pipe=pipe: one_at_a_time(pipe, questions))]
        runs += [(name, lambda stage=stage: stage.process(shard)) for name, stage in stages.items()]
        alternate(runs, args.rounds, len(questions), "questions")
        del pipe, stages, first, model


if __name__ == "__main__":
    main()
