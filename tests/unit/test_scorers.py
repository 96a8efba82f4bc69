"""scorers.sequence_classification: the scoring the difficulty regressor and reward models share.

Scores come back in input order whatever the batching, inputs are cut to the model's context, and models
without a usable one-output head are refused in one line. Models are tiny random Llamas built in code.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import build_tiny_model_dir, build_tiny_tokenizer, save_random_model, tiny_token_ids
from scalequest.models import ModelError
from scalequest.scorers.base import conversation, render_ids
from scalequest.scorers.sequence_classification import (
    ClassifierScorer,
    context_length,
    head_outputs,
    length_batches,
    load_classifier,
    read_model_config,
    score_ids,
    score_texts,
    use_padding,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "Tom has 3 apples and buys 5 more. How many apples does Tom have?",
    "What is 2 + 2?",
    "A train travels 60 miles per hour for 2 hours. How far does it go? " * 3,
    "Find x if 2x + 3 = 11.",
    "What is the sum of 12 and 30?",
    "Tom has 3 apples.",
    "A train travels 60 miles per hour for 2 hours. How far does it go?",
]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-scorer"), head="classifier", seed=2)


@pytest.fixture(scope="module")
def classifier(classifier_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = load_classifier(str(classifier_dir), "tiny", device="cpu", dtype="float32")
    assert use_padding(model, tokenizer)
    return model, tokenizer


def one_at_a_time(model, encoded: list[list[int]]) -> list[float]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in encoded]


def test_length_sorted_batches_return_scores_in_input_order(classifier):
    model, tokenizer = classifier
    encoded = [tokenizer(text)["input_ids"] for text in TEXTS]
    expected = one_at_a_time(model, encoded)
    assert len(set(round(s, 6) for s in expected)) > 1  # a constant model would pass trivially
    for size, max_padding in [(1, None), (3, None), (len(TEXTS), None), (3, 0.1), (len(TEXTS), 0.5)]:
        assert score_ids(model, tokenizer, encoded, size, max_padding) == pytest.approx(expected, abs=1e-5)
    assert score_texts(model, tokenizer, TEXTS, 4) == pytest.approx(expected, abs=1e-5)
    assert score_texts(model, tokenizer, [], 4) == []


def test_length_batches_without_a_padding_cap_are_full_and_longest_first():
    lengths = [100, 300, 95, 290, 280, 20, 99]
    assert list(length_batches(lengths, 3, max_padding=None)) == [[1, 3, 4], [0, 6, 2], [5]]
    assert list(length_batches(lengths, 2)) == [[1, 3], [4], [0, 6], [2], [5]]  # default: at most 10% padding


def test_texts_are_truncated_to_max_length_and_to_the_models_positions(classifier):
    model, tokenizer = classifier
    long_text = TEXTS[2] * 5
    ids = tokenizer(long_text)["input_ids"]
    assert len(ids) > 40
    assert score_texts(model, tokenizer, [long_text], 1, max_length=16) == pytest.approx(
        one_at_a_time(model, [ids[:16]]), abs=1e-5
    )
    positions = model.config.max_position_embeddings
    assert context_length(model) == positions
    assert context_length(model, max_length=16) == 16
    assert context_length(model, max_length=10 * positions) == positions
    model.config.max_position_embeddings = 24  # a short-context model: ids beyond it are cut, not an error
    try:
        assert score_ids(model, tokenizer, [ids, ids[:5]], 2) == pytest.approx(
            one_at_a_time(model, [ids[:24], ids[:5]]), abs=1e-5
        )
        assert score_texts(model, tokenizer, [long_text], 1, max_length=512) == pytest.approx(
            one_at_a_time(model, [ids[:24]]), abs=1e-5
        )
    finally:
        model.config.max_position_embeddings = positions


@pytest.fixture(scope="module")
def short_classifier_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 classifier with 16 learned positions: an input beyond them fails its position lookup."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = build_tiny_tokenizer()
    config = GPT2Config(n_positions=16, n_embd=32, n_layer=2, n_head=4, num_labels=1, **tiny_token_ids(tokenizer))
    path = tmp_path_factory.mktemp("tiny-gpt2") / "model"
    return save_random_model(path, GPT2ForSequenceClassification, config, tokenizer, seed=3)


def test_a_short_context_model_scores_inputs_cut_to_its_positions(short_classifier_dir, caplog):
    from transformers import AutoTokenizer

    from scalequest.stages.reward_select import RewardModelConfig

    model = load_classifier(str(short_classifier_dir), "short", device="cpu", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(short_classifier_dir)
    assert use_padding(model, tokenizer) and context_length(model) == 16
    long_text, short_text = TEXTS[2], TEXTS[1]
    ids = tokenizer(long_text)["input_ids"]
    with pytest.raises(IndexError):  # what scoring the whole input does
        one_at_a_time(model, [ids])
    # Difficulty scoring: question texts, cut by the tokenizer.
    expected = one_at_a_time(model, [ids[:16], tokenizer(short_text)["input_ids"]])
    assert score_texts(model, tokenizer, [long_text, short_text], 2, max_length=512) == pytest.approx(
        expected, abs=1e-5
    )
    # Reward scoring: conversations rendered with the chat template, cut after rendering, with a warning.
    scorer = ClassifierScorer(
        RewardModelConfig(model=str(short_classifier_dir), dtype="float32", device="cpu", batch_size=2)
    )
    chats = [conversation(short_text, long_text), conversation(short_text, "4")]
    with caplog.at_level(logging.WARNING, logger="scalequest.scorers"):
        scores = scorer.score(chats)
    encoded = [render_ids(scorer.tokenizer, chat) for chat in chats]
    assert all(len(ids) > 16 for ids in encoded)
    assert scores == pytest.approx(one_at_a_time(scorer.model, [ids[:16] for ids in encoded]), abs=1e-5)
    assert [r.getMessage() for r in caplog.records if "16 positions" in r.getMessage()]


def test_without_a_pad_token_the_model_pad_id_is_used_and_none_at_all_is_reported(classifier_dir):
    from transformers import AutoTokenizer

    model = load_classifier(str(classifier_dir), "tiny", device="cpu", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    pad = tokenizer.pad_token_id
    tokenizer.pad_token = None
    assert use_padding(model, tokenizer) and tokenizer.pad_token_id == pad
    assert tokenizer.padding_side == "right"
    tokenizer.pad_token, model.config.pad_token_id = None, None
    assert not use_padding(model, tokenizer)
    # Batches of one need no padding, so such a model still scores.
    encoded = [tokenizer(text)["input_ids"] for text in TEXTS[:3]]
    assert score_ids(model, tokenizer, encoded, 1) == pytest.approx(one_at_a_time(model, encoded), abs=1e-5)


def test_head_outputs_read_from_the_config(classifier_dir, tiny_model_dir, tmp_path):
    assert head_outputs(read_model_config(str(classifier_dir))[1]) == 1
    assert head_outputs(read_model_config(str(tiny_model_dir))[1]) is None  # a causal LM has no score head
    folder = tmp_path / "three-labels"
    shutil.copytree(classifier_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})
    (folder / "config.json").write_text(json.dumps(config))
    assert head_outputs(read_model_config(str(folder))[1]) == 3


def test_unreadable_models_and_missing_heads_are_one_line_errors(tmp_path, tiny_model_dir):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json\n")
    with pytest.raises(ModelError, match=r"^cannot load regressor '.*broken': ") as err:
        read_model_config(str(tmp_path / "broken"), what="regressor")
    assert "\n" not in str(err.value)
    # A causal LM's weights under a config that claims a classifier: the head would be random.
    folder = tmp_path / "no-head"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1)
    (folder / "config.json").write_text(json.dumps(config))
    assert head_outputs(read_model_config(str(folder))[1]) == 1
    with pytest.raises(ModelError, match=r"^regressor 'x' has no trained score head \(missing 'score.weight'\)"):
        load_classifier(str(folder), "x", what="regressor", device="cpu", dtype="float32")


def test_a_model_that_ships_its_own_code_names_the_setting(tmp_path):
    tokenizer = build_tiny_tokenizer()
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "not-in-transformers", "auto_map": {"AutoConfig": "modeling_x.XConfig"}})
    )
    tokenizer.save_pretrained(folder)
    with pytest.raises(ModelError, match=r"ships its own code; set reward.trust_remote_code: true"):
        read_model_config(str(folder), what="reward model", trust_setting="reward.trust_remote_code")
    with pytest.raises(ModelError, match=r"^cannot load regressor"):
        read_model_config(str(folder), what="regressor")
