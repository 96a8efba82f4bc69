"""qft: training text = prefix + question + end-of-turn, loss on the question and end-of-turn only; the trained
model writes a question from the bare prefix and stops. All on the tiny random Llama from conftest.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import sft_input_and_labels, tiny_training_config, write_jsonl
from scalequest.config import DataSource, engine_config
from scalequest.engines import SamplingParams
from scalequest.io import DataError
from scalequest.stages import qft
from scalequest.templates import end_of_turn, pre_query_prefix, stop_strings

QUESTION = "Tom has 3 apples and buys 5 more. How many apples does Tom have?"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_questions(path: Path, questions: list[str], field: str = "question") -> Path:
    return write_jsonl(path, [{field: q, "answer": "8"} for q in questions])


def config(tmp_path: Path, model: Path, questions: Path, **overrides) -> qft.QFTConfig:
    fields = dict(output=tmp_path / "qft", model=str(model), sources=[{"path": str(questions)}], max_length=64)
    return tiny_training_config(qft.QFTConfig, fields, **overrides)


def test_prefix_is_masked_and_end_of_turn_is_trained(tmp_path, tiny_model_dir, tiny_tokenizer):
    prefix, end = pre_query_prefix(tiny_tokenizer), end_of_turn(tiny_tokenizer)
    assert end == tiny_tokenizer.eos_token == "<|im_end|>"
    dataset, too_long = qft.build_dataset([QUESTION], tiny_tokenizer, prefix, end, max_length=64)
    assert too_long == 0
    input_ids, labels = sft_input_and_labels(tmp_path, tiny_model_dir, tiny_tokenizer, dataset)
    masked = [t for t, label in zip(input_ids, labels) if label == -100]
    trained = [label for label in labels if label != -100]
    assert tiny_tokenizer.decode(masked) == prefix
    assert tiny_tokenizer.decode(trained) == QUESTION + "<|im_end|>"
    # The end-of-turn is learned once: TRL must not have appended EOS a second time.
    assert trained[-1] == tiny_tokenizer.eos_token_id and trained[-2] != tiny_tokenizer.eos_token_id
    assert input_ids == tiny_tokenizer(prefix + QUESTION + end, add_special_tokens=False)["input_ids"]


def test_bos_in_template_and_end_of_turn_that_is_not_eos(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A DeepSeek-style template: BOS written as text, the user turn closed by 'Assistant:', EOS elsewhere."""
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
        "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    prefix, end = pre_query_prefix(tokenizer), end_of_turn(tokenizer)
    assert (prefix, end) == ("<|im_start|>User: ", "\n\nAssistant:")
    dataset, _ = qft.build_dataset([QUESTION], tokenizer, prefix, end, max_length=64)
    input_ids, labels = sft_input_and_labels(tmp_path, tiny_model_dir, tokenizer, dataset)
    assert input_ids.count(tokenizer.bos_token_id) == 1 and input_ids[0] == tokenizer.bos_token_id
    # 'User: ' + 'Tom' tokenizes as 'User:' ' Tom'; the prompt stays as generation encodes it, ' ' included.
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert input_ids[: len(prompt_ids)] == prompt_ids and labels[len(prompt_ids) - 1] == -100
    assert tokenizer.eos_token_id not in input_ids  # no EOS after 'Assistant:' (TRL would append one to text)
    trained = tokenizer.decode([label for label in labels if label != -100])
    assert trained == QUESTION + "\n\nAssistant:"


def test_missing_field_names_the_file_and_field(tmp_path, tiny_model_dir):
    source = write_questions(tmp_path / "q.jsonl", [QUESTION, QUESTION], field="problem")
    with pytest.raises(DataError, match=r"q\.jsonl: row q-0 has no text field 'question'"):
        qft.run(config(tmp_path, tiny_model_dir, source))
    assert not (tmp_path / "qft").exists()


def test_source_needs_exactly_one_location():
    with pytest.raises(ValidationError, match="exactly one of 'path', 'bundled' or 'hub'"):
        DataSource(fields={"question": "problem"})
    with pytest.raises(ValidationError, match="exactly one of 'path', 'bundled' or 'hub'"):
        DataSource(path="a.jsonl", hub="openai/gsm8k")


def test_unreachable_hub_source_is_one_clear_error(tmp_path, tiny_model_dir):
    cfg = qft.QFTConfig(
        output=tmp_path / "qft", model=str(tiny_model_dir), sources=[{"hub": "scalequest-test/no-such-dataset"}]
    )
    with pytest.raises(
        DataError, match="Hub dataset scalequest-test/no-such-dataset: the Hugging Face Hub could not be reached"
    ):
        qft.run(cfg)
    assert not (tmp_path / "qft").exists()


def test_default_sources_are_the_papers():
    names = [str(s) for s in qft.QFTConfig(output="x").sources]
    assert names == ["openai/gsm8k[main]:train", "DigitalLearningGmbH/MATH-lighteval:train"]


def test_max_questions_shuffles_with_the_seed_and_warns_when_short(tmp_path, caplog):
    questions = [f"What is {i} plus {i}?" for i in range(10)]
    source = write_questions(tmp_path / "q.jsonl", questions + ["   "])
    cfg = qft.QFTConfig(output=tmp_path / "o", sources=[{"path": str(source)}], max_questions=4, seed=1)
    chosen, summary = qft.collect_questions(cfg)
    assert len(chosen) == 4 and set(chosen) <= set(questions) and chosen != questions[:4]
    assert chosen == qft.collect_questions(cfg)[0]  # the same seed picks the same questions
    assert summary == {"questions_per_source": {str(source): 10}, "skipped": {"empty": 1}}
    with caplog.at_level(logging.WARNING, logger="scalequest"):
        everything, _ = qft.collect_questions(cfg.model_copy(update={"max_questions": 50}))
    assert sorted(everything) == sorted(questions)
    assert "asked for 50 questions but the sources hold 10" in caplog.text


def test_qft_learns_to_write_the_question_and_stop(tmp_path, tiny_model_dir):
    from scalequest.engines.hf import HFEngine

    source = write_questions(tmp_path / "q.jsonl", [QUESTION] * 4)
    cfg = config(tmp_path, tiny_model_dir, source, epochs=40, learning_rate=5e-3)
    manifest = qft.run(cfg)
    assert manifest["steps"] == 40 and manifest["rows_out"] == 4
    assert manifest["last_logged_loss"] < manifest["first_logged_loss"] * 0.5
    assert manifest["pre_query_prefix"].endswith("<|im_start|>user\n") and manifest["end_of_turn"] == "<|im_end|>"
    engine = HFEngine(engine_config(model=str(tmp_path / "qft"), dtype="float32"))
    prefix = pre_query_prefix(engine.tokenizer)
    [[completion]] = engine.generate(
        [prefix], SamplingParams(temperature=0, max_new_tokens=40, stop=tuple(stop_strings(engine.tokenizer)))
    )
    engine.close()
    assert completion.text.strip() == QUESTION
    assert completion.finish_reason == "stop"
    # Finished with the same config and questions: skipped, the manifest is not rewritten.
    assert qft.run(cfg)["finished_at"] == manifest["finished_at"]


def test_qft_with_lora_skips_questions_that_do_not_fit(tmp_path, tiny_model_dir):
    long_question = " ".join(["apples"] * 80) + "?"
    source = write_questions(tmp_path / "q.jsonl", [QUESTION] * 4 + [long_question])
    manifest = qft.run(config(tmp_path, tiny_model_dir, source, lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    assert manifest["rows_in"] == 5 and manifest["rows_out"] == 4 and manifest["dropped"] == {"too_long": 1}
    assert manifest["steps"] == 1
    saved = json.loads((tmp_path / "qft" / "config.json").read_text())
    assert saved["model_type"] == "llama" and not (tmp_path / "qft" / "adapter_config.json").exists()
