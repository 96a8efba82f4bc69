"""HFEngine: stop strings cut from every sequence whatever the padding, and prompts checked against the context.

Models are tiny random Llamas built in code (tests/conftest.py); greedy decoding makes their output fixed, so a
stop string is picked at test time from what the model produces.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from scalequest.config import engine_config
from scalequest.engines.base import SamplingParams
from scalequest.models import ModelError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Tom has 3 apples and buys 5 more.", "A train travels 60 miles per hour for 2 hours. How far does it go?"]
MAX_NEW = 12


def load(model_dir, **fields):
    from scalequest.engines.hf import HFEngine

    return HFEngine(engine_config(model=str(model_dir), dtype="float32", device="cpu", **fields))


@pytest.fixture(scope="module")
def nopad_engine(tiny_nopad_model_dir):
    import torch

    engine = load(tiny_nopad_model_dir)
    # At its init scale (std 0.02, tied embeddings) the tiny model echoes the prompt's last token forever, so a
    # stop string taken from its output would match at the start; larger weights make its greedy text change.
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in engine.model.parameters():
            if weight.dim() == 2:
                weight.normal_(0, 0.1)
    yield engine
    engine.close()


def pick_stop(engine, ids: list[int], other_text: str) -> tuple[str, int]:
    """A two-token stop string from `ids` (greedy output of one prompt) that first occurs where it was taken
    from, is more than one token long and is absent from the other prompt's output; with the token count up
    to its end."""
    tokenizer = engine.tokenizer
    full = tokenizer.decode(ids, skip_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    for start in range(1, len(ids) - 3):
        pair = ids[start : start + 2]
        stop = tokenizer.decode(pair)
        if special & set(pair) or not stop.strip() or stop in other_text:
            continue
        if len(tokenizer.encode(stop, add_special_tokens=False)) < 2:
            continue
        if full.find(stop) != len(tokenizer.decode(ids[:start])):
            continue
        return stop, start + 2
    pytest.skip("the random model's greedy output holds no usable two-token stop string")


def test_stop_strings_are_cut_when_the_pad_token_is_eos(nopad_engine):
    engine = nopad_engine
    tokenizer = engine.tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as for DeepSeekMath-RL
    engine.batch_size = 2  # both prompts in one batch: one stops early, the other keeps generating
    greedy = SamplingParams(temperature=0, max_new_tokens=MAX_NEW)
    free = engine.generate(PROMPTS, greedy)
    assert [c[0].finish_reason for c in free] == ["length", "length"]
    first_ids = tokenizer(free[0][0].text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(first_ids) == free[0][0].text
    stop, tokens_to_stop = pick_stop(engine, first_ids, free[1][0].text)

    stopped = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=MAX_NEW, stop=(stop,)))
    first, second = stopped[0][0], stopped[1][0]
    assert stop not in first.text and stop not in second.text
    assert first.text == free[0][0].text[: free[0][0].text.find(stop)]
    assert first.finish_reason == "stop"
    assert first.completion_tokens == tokens_to_stop  # up to the end of the stop string, no padding
    assert second.text == free[1][0].text  # the other sequence kept generating to the end
    assert (second.finish_reason, second.completion_tokens) == ("length", MAX_NEW)

    # Sampled, several per prompt: still no stop text in any sequence.
    sampled = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, n=3, stop=(stop,)))
    for completions in sampled:
        for c in completions:
            assert stop not in c.text
            assert c.completion_tokens <= MAX_NEW


def test_eos_still_stops_and_counts_itself(nopad_engine):
    engine = nopad_engine
    tokenizer = engine.tokenizer
    eos = tokenizer.eos_token_id
    # Three steps of the engine's completion builder, the pad token being the EOS.
    params = SamplingParams(max_new_tokens=6, stop=("zz",))
    ids = tokenizer("Tom has", add_special_tokens=False)["input_ids"]
    done = engine._completion(ids + [eos, eos], 3, {eos}, params, params.max_new_tokens)
    assert (done.text, done.completion_tokens, done.finish_reason) == ("Tom has", len(ids) + 1, "stop")


# --- the context guard ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_context_dir(tiny_model_dir, tmp_path_factory):
    """The tiny causal Llama with a 48-token context."""
    path = tmp_path_factory.mktemp("tiny-short") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 48
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def prompt_tokens(engine, text: str) -> int:
    from scalequest.engines.hf import encode

    return len(encode(engine.tokenizer, text))


def test_prompt_plus_max_new_tokens_beyond_the_context_is_an_error(short_context_dir):
    engine = load(short_context_dir)
    assert engine.context == 48
    short, long = PROMPTS
    with pytest.raises(ModelError) as err:
        engine.generate([short], SamplingParams(temperature=0, max_new_tokens=100000))
    message = str(err.value)
    assert str(short_context_dir) in message and "48" in message and "100000" in message
    assert str(prompt_tokens(engine, short)) in message
    assert "\n" not in message
    # Within the context, nothing changes.
    fits = 48 - prompt_tokens(engine, long)
    out = engine.generate([short, long], SamplingParams(temperature=0, max_new_tokens=fits))
    assert all(c[0].completion_tokens <= fits for c in out)
    engine.close()


def test_clamp_lowers_max_new_tokens_to_what_fits_with_one_warning(short_context_dir, caplog):
    engine = load(short_context_dir, context_overflow="clamp")
    engine.batch_size = 1  # each prompt its own batch, so each gets its own room
    short, long = PROMPTS
    room = {text: 48 - prompt_tokens(engine, text) for text in PROMPTS}
    with caplog.at_level(logging.WARNING, logger="scalequest.engines"):
        out = engine.generate([short, long], SamplingParams(temperature=0, max_new_tokens=1000))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "48" in warnings[0].getMessage()
    for text, completions in zip(PROMPTS, out):
        c = completions[0]
        assert c.completion_tokens <= room[text]
        assert c.prompt_tokens + c.completion_tokens <= 48
        if c.finish_reason == "length":
            assert c.completion_tokens == room[text]
    # A prompt that alone fills the context is an error in both modes.
    too_long = " ".join([long] * 4)
    assert prompt_tokens(engine, too_long) >= 48
    with pytest.raises(ModelError, match="48"):
        engine.generate([short, too_long], SamplingParams(temperature=0, max_new_tokens=1))
    engine.close()


def test_context_length_sources():
    from types import SimpleNamespace

    from scalequest.engines.base import model_context_length

    assert model_context_length(SimpleNamespace(max_position_embeddings=2048)) == 2048
    assert model_context_length(SimpleNamespace(n_positions=1024)) == 1024
    tokenizer = SimpleNamespace(model_max_length=4096)
    assert model_context_length(SimpleNamespace(), tokenizer) == 4096
    assert model_context_length(SimpleNamespace(), SimpleNamespace(model_max_length=int(1e30))) is None
    assert model_context_length(None, None) is None


# --- continuous batching ----------------------------------------------------------------------------------


def test_sequences_leave_and_enter_the_batch_without_changing_greedy_output(short_context_dir):
    """Prompts of different lengths get different room in a 48-token context, so sequences end at different
    steps: each ending one leaves, a waiting prompt enters the shared cache at another width, and every text
    is still what the prompt gives alone."""
    engine = load(short_context_dir, context_overflow="clamp")
    prompts = [" ".join(PROMPTS[1].split()[:k]) for k in (3, 14, 6, 1, 10, 8)]
    greedy = SamplingParams(temperature=0, max_new_tokens=40, n=2)
    engine.batch_size = 1
    alone = engine.generate(prompts, greedy)
    engine.batch_size = 3
    together = engine.generate(prompts, greedy)
    assert [[c.text for c in row] for row in together] == [[c.text for c in row] for row in alone]
    assert [[c.completion_tokens for c in row] for row in together] == [
        [min(40, 48 - prompt_tokens(engine, p))] * 2 for p in prompts
    ]
    assert len({c.completion_tokens for row in together for c in row}) > 1  # they did end at different steps
    # Sampling with a seed gives the same sequences again.
    sampled = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=40, n=2, seed=3)
    assert [[c.text for c in r] for r in engine.generate(prompts, sampled)] == [
        [c.text for c in r] for r in engine.generate(prompts, sampled)
    ]
    engine.close()


def test_a_sequence_that_ends_leaves_the_batch(tiny_model_dir):
    """The model is fed only the sequences still generating: after one ends, the next steps are narrower."""
    engine = load(tiny_model_dir)
    widths = []
    forward = engine.model.forward

    def recording(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    engine.model.forward = recording
    engine.batch_size = 4
    limits = iter([3, 9])
    engine._new_token_limits = lambda lengths, max_new: [next(limits) for _ in lengths]
    out = engine.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=9))
    assert [c[0].completion_tokens for c in out] == [3, 9]
    # One prefill of both prompts, two steps with both, then six with the one left.
    assert widths == [2, 2, 2] + [1] * 6
    engine.close()


# The nucleus found among the first or the second set of candidates, in the sorted vocabulary, or top_p 1.
@pytest.mark.parametrize("candidates, top_p", [((2, 5), 0.7), ((2, 3), 0.7), ((1024,), 0.7), ((2,), 1.0)])
def test_sampling_draws_from_transformers_top_p_nucleus(monkeypatch, candidates, top_p):
    import torch
    from transformers import TopPLogitsWarper

    from scalequest.engines import hf

    monkeypatch.setattr(hf, "TOP_P_CANDIDATES", candidates)
    logits = torch.tensor([[2.0, 1.5, 0.3, -1.0, 0.9, 0.0], [0.1, 0.2, 0.0, 0.05, 0.15, -0.1]])
    params = SamplingParams(temperature=0.8, top_p=top_p)
    expected = (TopPLogitsWarper(top_p)(None, logits / 0.8) if top_p < 1 else logits / 0.8).softmax(-1)
    draws = 20000
    tokens = hf.sample(logits.repeat(draws, 1), params, torch.Generator().manual_seed(0)).view(draws, 2)
    for row in range(2):
        frequency = torch.bincount(tokens[:, row], minlength=6) / draws
        assert torch.equal(frequency > 0, expected[row] > 0)  # the same nucleus
        assert torch.allclose(frequency, expected[row], atol=0.02)
    greedy = hf.sample(logits, SamplingParams(temperature=0), None)
    assert greedy.tolist() == [0, 1]
