"""generate-questions vs the same engine called directly on the same prompts: tok/s and their ratio.

The stage adds sharding, JSONL writing, stats and the manifest around `engine.generate`; this measures
what that costs. Both sides use one shard's worth of identical prompts and the same seed, so they
generate the same tokens. Model loading is excluded from both.

    python benchmarks/generation_throughput.py --num 32 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from scalequest.engines import SamplingParams, load_engine
from scalequest.runner import run_stage
from scalequest.stages.generate_questions import GenerateQuestions, GenerateQuestionsConfig, shard_seed
from scalequest.templates import pre_query_prefix, stop_strings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--engine", default="hf")
    parser.add_argument("--num", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternate direct/stage runs this many times")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = dict(
            num=args.num,
            shard_size=args.num,
            engine={"engine": args.engine, "model": args.model},
            sampling={"max_new_tokens": args.max_new_tokens, "seed": 0},
            progress=False,
        )
        config = GenerateQuestionsConfig(output=Path(tmp) / "warmup", **base)
        engine = load_engine(config.engine)
        tokenizer = engine.tokenizer
        prompts = [pre_query_prefix(tokenizer)] * args.num
        params = SamplingParams(
            temperature=config.sampling.temperature,
            top_p=config.sampling.top_p,
            max_new_tokens=args.max_new_tokens,
            stop=tuple(stop_strings(tokenizer)),
            seed=shard_seed(0, 0),
        )
        engine.generate(prompts, params)  # warm-up: the first call at a new batch shape is much slower

        direct_tokens = direct_seconds = stage_tokens = stage_seconds = 0.0
        inside = [0.0]  # seconds the stage spent inside engine.generate: the rest is what the stage adds

        class TimedEngine:
            def __getattr__(self, name):
                return getattr(engine, name)

            def generate(self, *args, **kwargs):
                started = time.perf_counter()
                try:
                    return engine.generate(*args, **kwargs)
                finally:
                    inside[0] += time.perf_counter() - started

        stage = GenerateQuestions(config)
        stage.setup = lambda: None  # reuse the loaded engine, so both sides run the same weights
        stage.engine = TimedEngine()
        stage.teardown = lambda: None
        for repeat in range(args.repeats):
            for side in ("direct", "stage") if repeat % 2 == 0 else ("stage", "direct"):  # alternate the order
                started = time.perf_counter()
                if side == "direct":
                    outputs = engine.generate(prompts, params)
                    direct_seconds += time.perf_counter() - started
                    direct_tokens += sum(c.completion_tokens for group in outputs for c in group)
                else:
                    stage.config = GenerateQuestionsConfig(output=Path(tmp) / f"run{repeat}", **base)
                    manifest = run_stage(stage)
                    stage_seconds += time.perf_counter() - started
                    stage_tokens += manifest["tokens_out"]

    direct_rate, stage_rate = direct_tokens / direct_seconds, stage_tokens / stage_seconds
    print(
        f"model={args.model} engine={args.engine} prompts={args.num} max_new_tokens={args.max_new_tokens} "
        f"repeats={args.repeats}"
    )
    print(f"direct engine.generate : {direct_rate:8.1f} tok/s ({int(direct_tokens)} tokens, {direct_seconds:.1f}s)")
    print(f"generate-questions     : {stage_rate:8.1f} tok/s ({int(stage_tokens)} tokens, {stage_seconds:.1f}s)")
    print(f"ratio stage/direct     : {stage_rate / direct_rate:.3f}")
    added = stage_seconds - inside[0]
    print(
        f"stage time outside engine.generate: {added:.2f}s over {args.repeats} runs "
        f"({added / stage_seconds:.1%} of the stage's time; the rest of any gap is run-to-run noise of generate itself)"
    )


if __name__ == "__main__":
    main()
