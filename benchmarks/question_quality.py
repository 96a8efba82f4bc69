"""What QFT and QPO do to the questions a model writes from the bare pre-query prefix, side by side.

By default this trains the chain itself on the embedded SmolLM2-135M-Instruct (each stage resumes or is
skipped when already done in --work): qft on --qft-questions GSM8K train questions, qpo-data with the QFT
model as generator and the raw model as optimizer (its reply prefilled with the marker), qpo on those pairs;
then it samples --num questions from each of raw / QFT / QPO with the paper's question sampling (temperature
1.0, top_p 0.99) and prints a Markdown table. Pass --models name=model ... to measure given models only.

Columns (each a share of the --num samples unless noted):
  ascii        non-empty and every character ASCII (the language filter's rule)
  math         looks like a math word problem: has a digit AND asks something -- ends with '?' or contains
               one of: how many, how much, how far, how long, what is, what was, find, calculate, compute,
               determine, solve, evaluate (case-insensitive). A transparent proxy, not a judge.
  stopped      ended at the end-of-turn (finish_reason "stop") rather than at the token limit
  words        mean length in whitespace-separated words (column is a mean, not a share)
  distinct-4   distinct word 4-grams / all word 4-grams over all samples (diversity; higher is more varied)
  duplicates   samples equal to an earlier one after whitespace and case normalisation

    python benchmarks/question_quality.py --work runs/question-quality
    python benchmarks/question_quality.py --models raw=embedded qft=runs/question-quality/qft --num 64
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.stages import qft, qpo
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig

GSM8K_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "gsm8k_train.jsonl"
ASKS = re.compile(
    r"\b(how (many|much|far|long)|what (is|was)|find|calculate|compute|determine|solve|evaluate)\b", re.IGNORECASE
)


def is_math_word_problem(text: str) -> bool:
    text = text.strip()
    return any(c.isdigit() for c in text) and (text.endswith("?") or ASKS.search(text) is not None)


def four_grams(text: str) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + 4]) for i in range(len(words) - 3)]


def measure(rows: list[dict]) -> dict[str, float]:
    questions = [row["question"] for row in rows]
    n = len(questions)
    grams = [gram for q in questions for gram in four_grams(q)]
    seen: set[str] = set()
    duplicates = 0
    for q in questions:
        key = " ".join(q.split()).lower()
        duplicates += key in seen
        seen.add(key)
    return {
        "samples": n,
        "ascii": sum(bool(q.strip()) and q.isascii() for q in questions) / n,
        "math": sum(is_math_word_problem(q) for q in questions) / n,
        "stopped": sum(row["finish_reason"] == "stop" for row in rows) / n,
        "words": sum(len(q.split()) for q in questions) / n,
        "distinct-4": len(set(grams)) / len(grams) if grams else 0.0,
        "duplicates": duplicates / n,
    }


def sample(name: str, model: str, work: Path, num: int, max_new_tokens: int, seed: int) -> list[dict]:
    config = GenerateQuestionsConfig(
        output=work / f"samples-{name}",
        num=num,
        shard_size=num,
        engine={"model": model},
        sampling={"temperature": 1.0, "top_p": 0.99, "max_new_tokens": max_new_tokens, "seed": seed},
        progress=False,
    )
    run_row_stage(GenerateQuestions, config)
    return io.load_rows(config.output)


def train_chain(work: Path, args: argparse.Namespace) -> dict[str, str]:
    """raw -> qft -> qpo-data -> qpo on the embedded model; returns name -> model for sampling."""
    models = {"raw": args.base}
    started = time.time()
    qft.run(
        qft.QFTConfig(
            output=work / "qft",
            model=args.base,
            sources=[{"path": str(args.questions), "field": "question"}],
            max_questions=args.qft_questions,
            batch_size=8,
            learning_rate=args.qft_learning_rate,
            logging_steps=4,
            progress=False,
        )
    )
    models["qft"] = str(work / "qft")
    print(f"qft: {time.time() - started:.0f} s", flush=True)
    started = time.time()
    pairs = run_row_stage(
        BuildQPOData,
        QPODataConfig(
            output=work / "qpo-data",
            num=args.qpo_questions,
            shard_size=args.qpo_questions,
            generator={"model": models["qft"]},
            sampling={"max_new_tokens": 128, "seed": args.seed + 1},
            optimizer={"model": args.base},
            optimizer_sampling={"max_new_tokens": 160},
            optimizer_reply_prefix="Final question:",
            progress=False,
        ),
    )
    print(
        f"qpo-data: {time.time() - started:.0f} s, {pairs['rows_out']} pairs of {pairs['rows_in']}, dropped "
        f"{pairs['dropped']}",
        flush=True,
    )
    if pairs["rows_out"] == 0:
        print("qpo: skipped, no usable pair")
        return models
    started = time.time()
    qpo.run(
        qpo.QPOConfig(
            input=work / "qpo-data",
            output=work / "qpo",
            model=models["qft"],
            learning_rate=args.qpo_learning_rate,
            epochs=args.qpo_epochs,
            batch_size=4,
            gradient_accumulation_steps=1,
            warmup_steps=0,
            logging_steps=1,
            progress=False,
        )
    )
    models["qpo"] = str(work / "qpo")
    print(f"qpo: {time.time() - started:.0f} s", flush=True)
    return models


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    columns = ["samples", "ascii", "math", "stopped", "words", "distinct-4", "duplicates"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, metrics in results.items():
        cells = [
            f"{metrics['samples']}",
            *(f"{metrics[c]:.0%}" for c in ("ascii", "math", "stopped")),
            f"{metrics['words']:.1f}",
            f"{metrics['distinct-4']:.2f}",
            f"{metrics['duplicates']:.0%}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--work", type=Path, default=Path("runs/question-quality"), help="folder for the trained models and samples"
    )
    parser.add_argument("--models", nargs="*", help="name=model pairs to measure instead of training the chain")
    parser.add_argument("--base", default="embedded", help="the raw model (also the QPO optimizer)")
    parser.add_argument("--questions", type=Path, default=GSM8K_TRAIN, help="JSONL with a `question` field for QFT")
    parser.add_argument("--qft-questions", type=int, default=256)
    parser.add_argument(
        "--qft-learning-rate", type=float, default=1e-4, help="paper: 2e-5 over ~15K questions; a short run needs more"
    )
    parser.add_argument("--qpo-questions", type=int, default=32, help="questions sampled and rewritten for QPO pairs")
    parser.add_argument("--qpo-learning-rate", type=float, default=5e-6)
    parser.add_argument("--qpo-epochs", type=float, default=2.0)
    parser.add_argument("--num", type=int, default=64, help="questions sampled per model")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.models:
        models = dict(item.split("=", 1) for item in args.models)
    else:
        models = train_chain(args.work, args)
    results = {}
    for name, model in models.items():
        started = time.time()
        rows = sample(name, model, args.work, args.num, args.max_new_tokens, args.seed)
        results[name] = measure(rows)
        print(
            f"sampled {name}: {time.time() - started:.0f} s; e.g. {json.dumps(rows[0]['question'][:160])}", flush=True
        )
    print()
    print(markdown_table(results))


if __name__ == "__main__":
    main()
