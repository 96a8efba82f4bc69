"""Reward scoring throughput: the reward-select stage's scorer vs one pair at a time (the official loop).

Both score the same (question, response) pairs with the same model object. The baseline is the loop
reward-model cards show: for each pair, apply_chat_template(tokenize=True), one forward pass, .item().
The stage renders every conversation, sorts by length and scores batches (right padding).

The model is the embedded SmolLM2-135M-Instruct turned into a one-output sequence classifier (the score
head is random: fine for timing), or with --tiny a tiny random Llama classifier. Pairs are GSM8K train
questions with their reference solutions when ../shared/data is present, else generated text.

    python benchmarks/reward_scoring.py                      # embedded model, 64 pairs, 3 alternating rounds
    python benchmarks/reward_scoring.py --batch-sizes 1,2,4,8,16   # sweep the stage's batch size
    python benchmarks/reward_scoring.py --tiny --pairs 32

Targets: >= 5x on a GPU, >= 1.0x on a CPU. Runs alternate (baseline, stage, stage, baseline, ...) so a busy
machine's load drifts affect both; the ratio printed is of the median rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
from difficulty_scoring import add_common_arguments, alternate, score_model  # noqa: E402


def load_pairs(count: int) -> list[tuple[str, str]]:
    path = REPO.parent / "shared" / "data" / "train" / "gsm8k_train.jsonl"
    pairs: list[tuple[str, str]] = []
    if path.is_file():
        with path.open() as lines:
            for line in lines:
                row = json.loads(line)
                solution = (
                    row["answer"].split("####")[0].strip()
                    + f"\n\nThe answer is $\\boxed{{{row['answer'].split('####')[-1].strip()}}}$."
                )
                pairs.append((row["question"], solution))
                if len(pairs) == count:
                    break
    words = "the train leaves at noon and travels sixty miles per hour for two hours so it goes".split()
    while len(pairs) < count:  # no shared data: varied lengths from a fixed word list
        i = len(pairs)
        pairs.append((" ".join(words[: 8 + i % 9]) + "?", " ".join(words * (2 + i % 7)) + " \\boxed{120}"))
    return pairs


def one_at_a_time(model, tokenizer, conversations) -> list[float]:
    """The official loop: tokenize one conversation, forward, read the score."""
    import torch

    scores = []
    for chat in conversations:
        inputs = tokenizer.apply_chat_template(chat, tokenize=True, return_tensors="pt", return_dict=True).to(
            model.device
        )
        with torch.no_grad():
            scores.append(model(**inputs).logits[0][0].item())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="(question, response) pairs scored per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both methods")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    add_common_arguments(parser, "classifier")
    args = parser.parse_args()

    import torch

    from scalequest.scorers import conversation
    from scalequest.scorers.sequence_classification import ClassifierScorer
    from scalequest.stages.reward_select import RewardModelConfig

    model_dir = score_model(args, "reward")
    conversations = [conversation(q, r) for q, r in load_pairs(args.pairs)]
    sizes = [int(s) for s in args.batch_sizes.split(",") if s] or [None]
    scorers = {
        size: ClassifierScorer(
            RewardModelConfig(model=str(model_dir), dtype=args.dtype, device=args.device, batch_size=size)
        )
        for size in sizes
    }
    # One model object for all: the baseline uses the first scorer's model and tokenizer.
    first = next(iter(scorers.values()))
    for scorer in scorers.values():
        scorer.model, scorer.tokenizer = first.model, first.tokenizer
    model, tokenizer = first.model, first.tokenizer
    lengths = [
        len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]) for c in conversations
    ]
    print(
        f"model {model_dir.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, {model.dtype}, "
        f"{model.device}), "
        f"torch threads {torch.get_num_threads()}, {len(conversations)} pairs, tokens per pair "
        f"{min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.0f})"
    )

    # Warm-up (first calls allocate and pick kernels), and a check that both give the same scores.
    reference = one_at_a_time(model, tokenizer, conversations[:8])
    for size, scorer in scorers.items():
        got = scorer.score(conversations[:8])
        print(
            f"batch {size or scorer.batch_size}: max |score difference| vs one at a time on 8 pairs = "
            f"{max(abs(a - b) for a, b in zip(got, reference)):.2e}"
        )

    runs = [("one at a time", lambda: one_at_a_time(model, tokenizer, conversations))]
    runs += [
        (f"stage, batch {s or first.batch_size}", lambda sc=sc: sc.score(conversations)) for s, sc in scorers.items()
    ]
    alternate(runs, args.rounds, len(conversations), "pairs")


if __name__ == "__main__":
    main()
