"""Shared fixtures: tiny random models and tokenizers built in code, so unit tests need no download."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Tom has 3 apples and buys 5 more. How many apples does Tom have?",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
    "What is the sum of 12 and 30? The answer is 42.",
    "Find x if 2x + 3 = 11. Solve step by step and put the answer in \\boxed{4}.",
    "You are a helpful assistant. system user assistant",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def write_jsonl(path: Path, rows: list) -> Path:
    """Write `rows` to `path` as JSON lines (making its folder if need be); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny_token_ids(tokenizer) -> dict:
    """The vocabulary size and special-token ids a model config takes from its tokenizer."""
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def save_random_model(path: Path, model_class, config, tokenizer, seed: int = 0) -> Path:
    """Save `model_class(config)` with random weights drawn after `torch.manual_seed(seed)`, and `tokenizer`."""
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The tiny Llama of build_tiny_model_dir: 4 heads of 8 dimensions.
TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
# A tiny Llama for vLLM: its CPU attention backend only supports head sizes 32, 64, 80, ... and rejects the
# head_dim 8 of TINY_LLAMA ("Unsupported CPU attention configuration: head_dim=8").
VLLM_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}


def build_tiny_model_dir(path: Path, head: str = "causal", seed: int = 0, tokenizer=None, **config) -> Path:
    """Save a tiny random Llama (causal LM or 1-output sequence classifier) with the tiny tokenizer (or
    `tokenizer`); `config` replaces settings of its LlamaConfig (e.g. `**VLLM_LLAMA`)."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = tokenizer or build_tiny_tokenizer()
    settings = {**TINY_LLAMA, **tiny_token_ids(tokenizer), "tie_word_embeddings": True, "num_labels": 1, **config}
    model_class = LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification
    return save_random_model(path, model_class, LlamaConfig(**settings), tokenizer, seed)


# --- stage configs for the tiny models -----------------------------------------------------------------------


def tiny_generation(model_dir, num: int = 12, shard_size: int = 3, max_new_tokens: int = 8) -> dict:
    """generate-questions settings on a tiny model, as config fields or a pipeline file's stage entry: `num`
    questions, `shard_size` to a shard, `max_new_tokens` each, no progress bar."""
    return {
        "num": num,
        "shard_size": shard_size,
        "engine": {"model": str(model_dir)},
        "sampling": {"max_new_tokens": max_new_tokens},
        "progress": False,
    }


def tiny_generate_config(output: Path, model_dir, **overrides):
    """GenerateQuestionsConfig writing `tiny_generation(model_dir)` to `output`; `overrides` replace its fields."""
    from scalequest.stages.generate_questions import GenerateQuestionsConfig

    return GenerateQuestionsConfig(**{"output": output, **tiny_generation(model_dir), **overrides})


# What the training tests share: batches of 4, the loss logged at every step, no progress bar.
TINY_TRAINING = {"batch_size": 4, "logging_steps": 1, "progress": False}


def tiny_training_config(config_class, fields: dict, **overrides):
    """A training stage's `config_class` on a tiny model: TINY_TRAINING, then a test module's `fields`, then a
    test's `overrides`, each replacing what came before."""
    return config_class(**{**TINY_TRAINING, **fields, **overrides})


def sft_input_and_labels(tmp_path: Path, model_dir: Path, tokenizer, dataset) -> tuple[list[int], list[int]]:
    """What TRL's SFTTrainer (completion-only loss, 64 tokens) makes of the first example of `dataset`: its input
    ids and the labels it trains on (-100 where the loss is masked)."""
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(
        model=str(model_dir),
        args=SFTConfig(
            output_dir=str(tmp_path / "x"), report_to="none", bf16=False, completion_only_loss=True, max_length=64
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    example = trainer.train_dataset[0]
    return example["input_ids"], example["labels"]


# --- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster on one torch thread, above all on a busy 2-core machine; modules that
    train or generate use it (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sandbox() -> None:
    """Tests that run programs in the sandbox skip (with its reason) only where this machine cannot sandbox."""
    from scalequest.code import SandboxUnavailable, check_available

    try:
        check_available()
    except SandboxUnavailable as error:
        pytest.skip(f"sandbox unavailable: {error}")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-causal"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def benchmarks_dir(shared_data) -> Path:
    """The shared benchmark test files (`<name>_test.jsonl`)."""
    path = shared_data / "benchmarks"
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_nopad_model_dir(tmp_path_factory) -> Path:
    """The tiny causal Llama with no pad token (as DeepSeekMath-RL has none): loaders pad with EOS."""
    from transformers import AutoTokenizer

    path = build_tiny_model_dir(tmp_path_factory.mktemp("tiny-nopad"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["pad_token_id"] = None
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
