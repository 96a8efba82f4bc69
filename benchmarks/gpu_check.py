"""GPU check at the paper's model sizes: generation, reward and difficulty scoring, one SFT and one DPO step.

Every model is built from its config with random weights (nothing is downloaded), directly on the device in
bf16, and fed random token ids of realistic lengths through a word-level tokenizer built in code (token `t123`
is id 123), so the project's own code paths run unchanged:

- generation: the hf engine (`HFEngine.generate`: continuous batching, its default batch of 64 on CUDA) on a
  Qwen2-7B-shaped causal LM (the paper's question and response generators are 7B Qwen2-Math models), 64 prompts
  of 60-200 tokens x 256 new tokens, sampled at temperature 1. The engine normally loads its model from disk;
  here its loader is replaced by one returning the config-built model and the tokenizer, the rest of the engine
  runs as is. The tokenizer's EOS is unset during the run, so every row gets exactly 256 new tokens and tok/s
  does not depend on where a random model stops.
- reward scoring: `score_ids` with reward-select's default CUDA batch size (scorers/base.py CUDA_BATCH_SIZE)
  and its padding cap, vs the loop reward-model cards show (one pair per forward pass, `.item()` each), on the
  same model and the same inputs: 256 (question, response) pairs of 300-1200 tokens batched, and a
  length-stratified quarter of them (64) one at a time; rates in pairs/s are compared. The paper's reward
  model, InternLM2-7B-Reward, is remote code (InternLM2 is not in transformers), so an equivalent-size
  `LlamaForSequenceClassification` stands in for it (hidden 4096, 32 layers, 32 heads, 8 KV heads,
  intermediate 14336, vocab 92544, 1 output): InternLM2 is a Llama-style decoder with these dimensions.
- difficulty scoring: the same comparison for score-difficulty (`score_ids` without a padding cap and with the
  stage's GPU_BATCH_SIZE, which is what `score_questions` runs after tokenizing), on a DeepSeekMath-7B-base-
  shaped Llama regressor (hidden 4096, 30 layers, 32 heads, 32 KV heads, intermediate 11008, vocab 102400,
  1 output), 256 questions of 60-200 tokens batched vs 64 one at a time.
- SFT step and DPO step on the Qwen2-7B shape: full fine-tuning with AdamW does not fit in 80 GB, so PEFT LoRA
  (r 16, alpha 32, on q/k/v/o/gate/up/down projections), gradient checkpointing, bf16 autocast, sequences of
  1024 tokens. A plain loop, no Trainer: one warm-up step, then one timed step = forward, backward and
  AdamW step (SFT: 4 sequences, loss on the tokens after a 150-token prompt; DPO: 2 (chosen, rejected) pairs
  in one forward pass of 4 sequences, the reference log-probs from the same model with the adapters off
  (`model.disable_adapter()`) under no_grad, and the sigmoid DPO loss with beta 0.1, as TRL's default, written
  out). Peak memory is torch.cuda.max_memory_allocated over warm-up and timed step, weights included.

Targets: batched scoring >= 5x one at a time. The whole run takes a few minutes on one H100 80 GB (<= 8).

    python benchmarks/gpu_check.py                      # on a GPU machine: the paper's sizes
    python benchmarks/gpu_check.py --quick              # fewer tokens and inputs, shorter training sequences
    python benchmarks/gpu_check.py --tiny --device cpu  # tiny shapes, --quick sizes, on a CPU: checks it runs
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

SPECIALS = ["<pad>", "<eos>", "<unk>"]  # ids 0, 1, 2; random token ids are drawn from 3 up
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DPO_BETA = 0.1
TARGET_RATIO = 5.0

# The paper's shapes. Qwen2-7B (the generators and the trained model), DeepSeekMath-7B-base (the difficulty
# regressor), and InternLM2-7B-Reward's dimensions on a Llama classifier (see the docstring).
SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
)
# Values in SHAPE_FIELDS order, as the models' config.json files give them.
QWEN2_7B = {**dict(zip(SHAPE_FIELDS, (3584, 28, 28, 4, 18944, 152064, 32768, 1e6))), "tie_word_embeddings": False}
INTERNLM2_7B_REWARD = dict(zip(SHAPE_FIELDS, (4096, 32, 32, 8, 14336, 92544, 32768, 1e6)))
DEEPSEEKMATH_7B = dict(zip(SHAPE_FIELDS, (4096, 30, 32, 32, 11008, 102400, 4096, 1e4)))
# --tiny: the same code on shapes a CPU runs in seconds.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
TINY_VOCAB = 1000

# How much each check does. Full sizes fit the <= 8 minute budget on an H100; --quick shrinks them.
SIZES = dict(prompts=64, new_tokens=256, scored=256, one_at_a_time=64, seq=1024, sft_batch=4, dpo_pairs=2)
QUICK = dict(prompts=64, new_tokens=32, scored=64, one_at_a_time=16, seq=512, sft_batch=4, dpo_pairs=2)
# --tiny only checks that everything runs, on a CPU where generate's own overhead alone is tens of ms a token.
TINY_SIZES = QUICK


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:1, cpu")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and inputs, 512-token training sequences")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (2 layers, hidden 64, vocab 1000), for a CPU")
    return parser.parse_args()


def pick_device(args: argparse.Namespace):
    """The torch device; without --tiny only CUDA will do (7B shapes on a CPU would take hours)."""
    import torch

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if (device.type == "cuda" and not torch.cuda.is_available()) or (device.type != "cuda" and not args.tiny):
        print(
            "gpu_check.py needs a CUDA GPU for the paper's 7B shapes (none found or --device is not cuda); "
            "run `python benchmarks/gpu_check.py --tiny --device cpu` to check that it runs",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return device


def id_tokenizer(vocab_size: int):
    """A word-level tokenizer over the whole vocabulary: text "t5 t9" is ids [5, 9], so random ids go through
    the project's code (which pads, encodes and decodes with a tokenizer) unchanged. Pad 0, EOS 1, no BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def random_ids(rng: random.Random, vocab_size: int, low: int, high: int) -> list[int]:
    """Random token ids, never a special token, of a length drawn uniformly from [low, high]."""
    return [rng.randrange(len(SPECIALS), vocab_size) for _ in range(rng.randint(low, high))]


def build(kind: str, shape: dict, tiny: bool, device, dtype):
    """A random-weight model made on `device` itself (no CPU copy, no download): "causal" is a Qwen2 causal LM,
    "classifier" a 1-output Llama sequence classifier."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, Qwen2Config

    if tiny:
        shape = {**shape, **TINY, "vocab_size": TINY_VOCAB}
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        if kind == "causal":
            return AutoModelForCausalLM.from_config(Qwen2Config(**shape, **ids), dtype=dtype).eval()
        config = LlamaConfig(**shape, **ids, num_labels=1, problem_type="regression")
        return AutoModelForSequenceClassification.from_config(config, dtype=dtype).eval()


def free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> str:
    import torch

    if device.type != "cuda":
        return "n/a on cpu"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def params_b(model) -> str:
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e9:.2f}B params" if count >= 1e8 else f"{count / 1e6:.2f}M params"


# --- generation -------------------------------------------------------------------------------------------------


def check_generation(model, tokenizer, device, sizes: dict, rng: random.Random) -> dict:
    """New tokens per second of HFEngine.generate on a config-built model."""
    from unittest import mock

    from scalequest import progress
    from scalequest.config import engine_config
    from scalequest.engines import hf
    from scalequest.engines.base import SamplingParams

    def loaded(config):  # what load_causal_lm does after from_pretrained: left padding, eval mode
        tokenizer.padding_side = "left"
        return tokenizer, model.eval()

    with mock.patch.object(hf, "load_causal_lm", loaded):
        engine = hf.HFEngine(engine_config(model="config-built Qwen2-7B shape", device=str(device)))
    progress.hide_inner_bars()  # the engine's per-batch bar would garble the report
    vocab = model.config.vocab_size
    prompts = [" ".join(f"t{i}" for i in random_ids(rng, vocab, 60, 200)) for _ in range(sizes["prompts"])]

    def run(new_tokens: int) -> tuple[float, int]:
        params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=0)
        # Without an EOS id the engine has nothing to stop on: every row gets exactly `new_tokens`.
        eos, tokenizer.eos_token = tokenizer.eos_token, None
        try:
            sync(device)
            started = time.perf_counter()
            results = engine.generate(prompts, params)
            sync(device)
        finally:
            tokenizer.eos_token = eos
        return time.perf_counter() - started, sum(c[0].completion_tokens for c in results)

    run(4)  # warm-up: the first calls allocate memory and pick kernels
    seconds, tokens = run(sizes["new_tokens"])
    return {
        "measured": f"{len(prompts)} prompts (60-200 tokens) x {sizes['new_tokens']} new tokens, engine batch "
        f"{engine.batch_size}: {tokens} tokens in {seconds:.1f} s",
        "figure": f"{tokens / seconds:.0f} tok/s",
    }


# --- scoring ----------------------------------------------------------------------------------------------------


def one_at_a_time(model, encoded: list[list[int]]) -> list[float]:
    """The model cards' loop: one input per forward pass, its score read back at once."""
    import torch

    scores = []
    for ids in encoded:
        with torch.inference_mode():
            scores.append(
                model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, 0].item()
            )
    return scores


def check_scoring(model, tokenizer, encoded: list[list[int]], batch_size: int, max_padding, sizes: dict, unit: str):
    """Rate of the stage's batched score_ids over all inputs vs the one-at-a-time loop over a quarter of them.

    The quarter is every k-th input by length, so both sides see the same length mix and their rates per
    input compare fairly; both run on the same model object."""
    from scalequest.scorers.sequence_classification import score_ids, use_padding

    device = model.device
    if not use_padding(model, tokenizer):  # as ClassifierScorer and score-difficulty set it up
        raise RuntimeError("the tokenizer has no pad token")
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    step = max(1, len(encoded) // sizes["one_at_a_time"])
    subset = by_length[::step][: sizes["one_at_a_time"]]

    score_ids(model, tokenizer, encoded[:batch_size], batch_size, max_padding)  # warm-up
    one_at_a_time(model, [encoded[i] for i in subset[:2]])

    sync(device)
    started = time.perf_counter()
    batched = score_ids(model, tokenizer, encoded, batch_size, max_padding)
    sync(device)
    batched_rate = len(encoded) / (time.perf_counter() - started)

    started = time.perf_counter()
    single = one_at_a_time(model, [encoded[i] for i in subset])
    sync(device)
    single_rate = len(subset) / (time.perf_counter() - started)

    # Padding changes bf16 rounding a little, never the score itself: a large difference would be a bug.
    difference = max(abs(batched[i] - s) for i, s in zip(subset, single))
    mean = sum(len(ids) for ids in encoded) / len(encoded)
    ratio = batched_rate / single_rate
    return {
        "measured": f"batch {batch_size}: {batched_rate:.1f} {unit}/s ({len(encoded)}, mean {mean:.0f} tokens); "
        f"one at a time: {single_rate:.1f} {unit}/s ({len(subset)}); max score diff {difference:.1e}",
        "figure": f"{ratio:.1f}x",
        "target": f">= {TARGET_RATIO:.0f}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'}"
        if device.type == "cuda"
        else f">= {TARGET_RATIO:.0f}x on a GPU (not judged on a CPU)",
    }


# --- training ---------------------------------------------------------------------------------------------------


def with_lora(model):
    """The model with LoRA adapters and gradient checkpointing, in training mode (only the adapters train)."""
    import warnings

    from peft import LoraConfig, get_peft_model

    model.config.use_cache = False
    # Non-reentrant checkpointing gives gradients to the adapters without inputs that require grad.
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_MODULES, task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing: noise here
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, lora)
    model.train()
    return model


def autocast(device):
    """bf16 autocast on CUDA, as the training stages' bf16 mixed precision; CPU runs stay in float32."""
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def timed_steps(step, device) -> float:
    """Seconds of one optimizer step, after one warm-up step; peak memory counts both."""
    reset_peak(device)
    step()  # warm-up
    sync(device)
    started = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - started


def check_sft(model, device, sizes: dict, rng: random.Random) -> dict:
    """One LoRA SFT step: causal-LM loss on the response tokens of `sft_batch` sequences of `seq` tokens."""
    import torch

    batch, seq, prompt = sizes["sft_batch"], sizes["seq"], 150
    vocab = model.config.vocab_size
    ids = torch.tensor([random_ids(rng, vocab, seq, seq) for _ in range(batch)], device=device)
    labels = ids.clone()
    labels[:, :prompt] = -100  # completion-only loss, as the SFT stage trains
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        with autocast(device):
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed_steps(step, device)
    return {
        "measured": f"LoRA r16, grad ckpt, {batch} x {seq} tokens: {seconds:.2f} s/step",
        "figure": f"{batch * seq / seconds:.0f} tok/s, peak {peak_gib(device)}",
    }


def sequence_logps(model, ids, mask):
    """Sum of the log-probs of the tokens where `mask` is 1 (the response), one per sequence."""
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logps * mask[:, 1:]).sum(-1)


def check_dpo(model, device, sizes: dict, rng: random.Random) -> dict:
    """One LoRA DPO step on `dpo_pairs` (chosen, rejected) pairs; reference = the model with adapters off."""
    import torch
    import torch.nn.functional as F

    pairs, seq, prompt = sizes["dpo_pairs"], sizes["seq"], 200
    vocab = model.config.vocab_size
    prompts = [random_ids(rng, vocab, prompt, prompt) for _ in range(pairs)]
    # Rows 0..pairs-1 chosen, then the rejected ones, each prompt + response = seq tokens: one forward for all.
    rows = [p + random_ids(rng, vocab, seq - prompt, seq - prompt) for p in prompts * 2]
    ids = torch.tensor(rows, device=device)
    mask = torch.zeros_like(ids, dtype=torch.float32)
    mask[:, prompt:] = 1.0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        with torch.no_grad(), model.disable_adapter(), autocast(device):
            reference = sequence_logps(model, ids, mask)
        with autocast(device):
            policy = sequence_logps(model, ids, mask)
        ratios = policy - reference
        loss = -F.logsigmoid(DPO_BETA * (ratios[:pairs] - ratios[pairs:])).mean()  # the sigmoid DPO loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed_steps(step, device)
    return {
        "measured": f"LoRA r16, grad ckpt, {pairs} pairs x 2 x {seq} tokens, reference with adapters off: "
        f"{seconds:.2f} s/step",
        "figure": f"{pairs / seconds:.2f} pairs/s, peak {peak_gib(device)}",
    }


# --- report -----------------------------------------------------------------------------------------------------


def print_header(device, dtype, args: argparse.Namespace) -> None:
    import platform

    import peft
    import torch
    import transformers

    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"GPU {gpu} ({memory:.0f} GiB)"
    else:
        where = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    shapes = "tiny shapes (2 layers, hidden 64, vocab 1000)" if args.tiny else "the paper's 7B shapes"
    print(f"{where}; torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    quick = ", --quick sizes" if args.quick or args.tiny else ""
    print(f"{shapes}, {str(dtype).removeprefix('torch.')}, random weights{quick}")


def print_table(rows: list[tuple[str, dict]]) -> None:
    print("\n| check | measured | figure | target |")
    print("|---|---|---|---|")
    for name, row in rows:
        print(f"| {name} | {row['measured']} | {row['figure']} | {row.get('target', '-')} |")


def main() -> None:
    args = parse_args()
    device = pick_device(args)
    started = time.perf_counter()

    from scalequest.engines.hf import pick_device_and_dtype
    from scalequest.scorers.base import CPU_BATCH_SIZE, CUDA_BATCH_SIZE
    from scalequest.scorers.sequence_classification import MAX_PADDING
    from scalequest.stages import filter_difficulty

    _, dtype = pick_device_and_dtype(str(device), "auto")  # bf16 on CUDA, as every stage loads its model
    sizes = QUICK if args.quick else TINY_SIZES if args.tiny else SIZES
    print_header(device, dtype, args)
    on_cuda = device.type == "cuda"
    rng = random.Random(0)
    results: dict[str, dict] = {}

    def note(name: str) -> None:
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: {results[name]['figure']}", flush=True)

    # Qwen2-7B shape: generation, then LoRA SFT and DPO on the same weights (one build saves a minute).
    model = build("causal", QWEN2_7B, args.tiny, device, dtype)
    tokenizer = id_tokenizer(model.config.vocab_size)
    print(f"Qwen2-7B shape: {params_b(model)}", flush=True)
    gen = "generation, hf engine (Qwen2-7B shape)"
    results[gen] = check_generation(model, tokenizer, device, sizes, rng)
    note(gen)
    model = with_lora(model)
    sft, dpo = "SFT step (Qwen2-7B shape)", "DPO step (Qwen2-7B shape)"
    results[sft] = check_sft(model, device, sizes, rng)
    note(sft)
    results[dpo] = check_dpo(model, device, sizes, rng)
    note(dpo)
    del model
    free(device)

    # Reward model: (question, response) pairs of 300-1200 tokens, reward-select's batch size and padding cap.
    # Difficulty regressor: questions of 60-200 tokens, score-difficulty's batch size, no padding cap.
    reward = "reward scoring, batched vs one at a time (InternLM2-7B-Reward shape)"
    difficulty = "difficulty scoring, batched vs one at a time (DeepSeekMath-7B shape)"
    scorings = [
        (
            reward,
            INTERNLM2_7B_REWARD,
            "InternLM2-7B-Reward shape (Llama classifier)",
            (300, 1200),
            "pairs",
            CUDA_BATCH_SIZE if on_cuda else CPU_BATCH_SIZE,
            MAX_PADDING,
        ),
        (
            difficulty,
            DEEPSEEKMATH_7B,
            "DeepSeekMath-7B shape (Llama regressor)",
            (60, 200),
            "questions",
            filter_difficulty.GPU_BATCH_SIZE if on_cuda else filter_difficulty.CPU_BATCH_SIZE,
            None,
        ),
    ]
    for name, shape, label, (shortest, longest), unit, batch, max_padding in scorings:
        model = build("classifier", shape, args.tiny, device, dtype)
        tokenizer = id_tokenizer(model.config.vocab_size)
        print(f"{label}: {params_b(model)}", flush=True)
        inputs = [random_ids(rng, model.config.vocab_size, shortest, longest) for _ in range(sizes["scored"])]
        results[name] = check_scoring(model, tokenizer, inputs, batch, max_padding, sizes, unit)
        note(name)
        del model
        free(device)

    print_table([(name, results[name]) for name in (gen, reward, difficulty, sft, dpo)])
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
