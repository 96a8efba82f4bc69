"""qpo-data (questions from the generator, rewrites from an optimizer, drop reasons counted) and qpo (TRL DPO
that raises the chosen-over-rejected margin), on the tiny random Llama from conftest.

The tiny model's rewrites are garbage, so the row logic is tested with a scripted optimizer: a real Engine
subclass that answers each rewrite request with a canned reply.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_training_config, write_jsonl
from scalequest import io
from scalequest.runner import run_row_stage
from scalequest.engines import Completion, Engine, SamplingParams
from scalequest.io import DataError
from scalequest.stages import qpo
from scalequest.stages.qpo_data import BuildQPOData, QPODataConfig, choose_direction, judge_rewrite
from scalequest.templates import pre_query_prefix

REWRITE = "Ann has 12 apples and gives 5 to Ben. How many apples does Ann have left?"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def asked_question(prompt: list[dict]) -> str:
    """The question an optimizer prompt asks about (it sits between 'Question:' and the instructions)."""
    return prompt[0]["content"].split("Question:\n", 1)[1].split("\n\nDo the following", 1)[0]


def reply(text: str, finish_reason: str = "stop") -> list[Completion]:
    return [Completion(text, prompt_tokens=50, completion_tokens=len(text.split()), finish_reason=finish_reason)]


# One canned optimizer behaviour per question, in order: what a real optimizer (or its API) does now and then.
SCRIPT = [
    lambda q: reply(f"Solvable: yes.\n\n**Final Question:** {REWRITE}"),  # good
    lambda q: [],  # failed for good after retries, or timed out
    lambda q: reply("Final question: " + " ".join(q.split())),  # unchanged (up to whitespace)
    lambda q: reply("This question is already perfect."),  # no marked final question
    lambda q: reply("Final question: Anne a 12 pommes. Combien en reste-t-il à Anne ?"),  # non-ASCII
    lambda q: reply(
        "Final question: " + "Ann has many apples. " * 20 + "How many?"
    ),  # too long (max_rewrite_chars=200)
    lambda q: reply(
        "Plan: add a step.\n### Final question\nAnn has 12 apples and gives 5 to", "length"
    ),  # cut by the token limit
    lambda q: reply(f"### Final question\n{REWRITE.replace('12', '15')}\n\nNote: numbers changed."),  # good
]


class ScriptedOptimizer(Engine):
    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[list[dict]] = []

    def generate(self, prompts, params: SamplingParams) -> list[list[Completion]]:
        results = []
        for prompt in prompts:
            results.append(SCRIPT[len(self.prompts) % len(SCRIPT)](asked_question(prompt)))
            self.prompts.append(prompt)
        return self._count(results)


class WithScriptedOptimizer(BuildQPOData):
    def load_optimizer(self) -> Engine:
        self.scripted = ScriptedOptimizer()
        return self.scripted


def data_config(tmp_path: Path, model_dir: Path, **overrides) -> QPODataConfig:
    values = dict(
        output=tmp_path / "pairs",
        num=8,
        shard_size=4,
        generator={"model": str(model_dir)},
        sampling={"max_new_tokens": 8, "seed": 3},
        optimizer={"model": str(model_dir)},
        optimizer_sampling={"max_new_tokens": 8},
        max_rewrite_chars=200,
        progress=False,
    )
    values.update(overrides)
    return QPODataConfig(**values)


def test_qpo_data_keeps_good_rewrites_and_counts_every_drop(tmp_path, tiny_model_dir, tiny_tokenizer):
    stage = WithScriptedOptimizer(data_config(tmp_path, tiny_model_dir, max_failed_fraction=0.2))
    from scalequest.runner import run_stage

    manifest = run_stage(stage)
    assert manifest["rows_in"] == 8 and manifest["rows_out"] == 2
    assert manifest["dropped"] == {
        "failed": 1,
        "unchanged": 1,
        "no_final_question": 1,
        "non_ascii": 1,
        "too_long": 1,
        "optimizer_truncated": 1,
    }
    assert manifest["counts"]["direction_solvability"] + manifest["counts"]["direction_difficulty"] == 7
    rows = io.load_rows(tmp_path / "pairs")
    assert [row["chosen"] for row in rows] == [REWRITE, REWRITE.replace("12", "15")]
    prompts = {asked_question(p): p[0]["content"] for p in stage.scripted.prompts}
    for row in rows:
        assert row["prompt"] == pre_query_prefix(tiny_tokenizer)
        assert row["rejected"] in prompts and row["rejected"] != row["chosen"]  # the generator's own question
        assert row["direction"] == choose_direction(0, row["id"], ["solvability", "difficulty"])
        # The optimizer was asked for this row's direction.
        assert ("10 to 20 words" in prompts[row["rejected"]]) == (row["direction"] == "difficulty")
        assert row["optimizer"] == str(tiny_model_dir) and "Final" in row["optimizer_output"]


def test_qpo_data_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    """The tiny model as optimizer writes garbage: every pair is dropped, and each drop has a reason."""
    manifest = run_row_stage(BuildQPOData, data_config(tmp_path, tiny_model_dir, num=4))
    assert manifest["rows_out"] + sum(manifest["dropped"].values()) == 4
    assert set(manifest["dropped"]) <= {"no_final_question", "optimizer_truncated", "empty_original"}
    assert manifest["tokens_out"] > 0 and manifest["optimizer"] == str(tiny_model_dir)
    # Rerun with the same config: skipped.
    assert (
        run_row_stage(BuildQPOData, data_config(tmp_path, tiny_model_dir, num=4))["finished_at"]
        == manifest["finished_at"]
    )


class PrefilledOptimizer(Engine):
    """Continues a prefilled reply: writes only the question, as a small model does after 'Final question:'."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[list[dict]] = []

    def generate(self, prompts, params: SamplingParams) -> list[list[Completion]]:
        self.prompts.extend(prompts)
        return self._count([reply(f" {REWRITE}\n\nThe answer is 7.") for _ in prompts])


def test_optimizer_reply_prefix_is_prefilled_and_parsed_with_the_reply(tmp_path, tiny_model_dir):
    class WithPrefilledOptimizer(BuildQPOData):
        def load_optimizer(self) -> Engine:
            self.prefilled = PrefilledOptimizer()
            return self.prefilled

    stage = WithPrefilledOptimizer(
        data_config(tmp_path, tiny_model_dir, num=4, optimizer_reply_prefix="Final question:")
    )
    from scalequest.runner import run_stage

    manifest = run_stage(stage)
    assert manifest["rows_out"] == 4, manifest["dropped"]
    assert all(p[-1] == {"role": "assistant", "content": "Final question:"} for p in stage.prefilled.prompts)
    for row in io.load_rows(tmp_path / "pairs"):
        assert row["chosen"] == REWRITE and row["optimizer_output"].startswith(f"Final question: {REWRITE}")


def test_a_prefilled_reply_is_continued_not_closed(tiny_tokenizer):
    from scalequest.engines.base import render_prompt

    conversation = [{"role": "user", "content": "Rewrite: 1+1?"}]
    opened = render_prompt(tiny_tokenizer, conversation)
    prefilled = render_prompt(tiny_tokenizer, conversation + [{"role": "assistant", "content": "Final question:"}])
    assert prefilled.startswith(opened) and prefilled.endswith("Final question:")
    assert render_prompt(tiny_tokenizer, "raw text") == "raw text"


def test_reply_prefix_with_a_remote_optimizer_is_refused(tmp_path, tiny_model_dir):
    from scalequest.config import ConfigError

    config = data_config(
        tmp_path,
        tiny_model_dir,
        optimizer={"engine": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1"},
        optimizer_reply_prefix="Final question:",
    )
    with pytest.raises(ConfigError, match="optimizer_reply_prefix needs a local optimizer engine"):
        run_row_stage(BuildQPOData, config)
    assert not (tmp_path / "pairs").exists()


def test_judge_rewrite_reasons():
    question = "Tom has 3 apples. How many?"
    assert judge_rewrite(question, f"Final question: {REWRITE}", "stop", 500) == (REWRITE, None)
    assert judge_rewrite(question, "Final question: tom has 3   APPLES. How many?", "stop", 500)[1] == "unchanged"
    assert judge_rewrite(question, "Final question:", "stop", 500) == ("", "empty_rewrite")
    assert judge_rewrite(question, "thinking...", "length", 500) == (None, "optimizer_truncated")
    # A question followed by more text was not cut, even when the reply hit the limit later.
    assert judge_rewrite(question, f"Final question: {REWRITE}\n\nNote: I changed", "length", 500) == (REWRITE, None)


def write_pairs(path: Path, prefix: str, rows: int = 8) -> Path:
    pairs = [
        {
            "prompt": prefix,
            "chosen": f"Tom has {i} apples and buys 5 more. How many apples does Tom have?",
            "rejected": f"What is the sum of {i} and 30?",
        }
        for i in range(rows)
    ]
    return write_jsonl(path, pairs)


def qpo_config(tmp_path: Path, model_dir: Path, pairs: Path, **overrides) -> qpo.QPOConfig:
    fields = dict(input=pairs, output=tmp_path / "qpo", model=str(model_dir), learning_rate=1e-3, max_length=128)
    # One optimizer step per batch of 4 pairs and no warmup: 3 epochs of write_pairs' 8 pairs are 6 steps.
    steps = dict(gradient_accumulation_steps=1, warmup_steps=0, epochs=3)
    return tiny_training_config(qpo.QPOConfig, {**fields, **steps}, **overrides)


def margin(model_dir: Path, prefix: str, chosen: str, rejected: str) -> float:
    """log p(chosen | prefix) - log p(rejected | prefix), each text closed by the end-of-turn, as DPO scores them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]

    def logprob(text: str) -> float:
        ids = tokenizer(prefix + text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        targets = torch.tensor(ids[1:])
        return logits[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :].sum().item()

    return logprob(chosen) - logprob(rejected)


def test_dpo_raises_the_chosen_over_rejected_margin(tmp_path, tiny_model_dir, tiny_tokenizer):
    prefix = pre_query_prefix(tiny_tokenizer)
    pairs = write_pairs(tmp_path / "pairs.jsonl", prefix)
    manifest = qpo.run(qpo_config(tmp_path, tiny_model_dir, pairs))
    assert manifest["steps"] == 6
    logged = [entry for entry in manifest["log_history"] if "rewards/margins" in entry]
    assert logged[-1]["rewards/margins"] > logged[0]["rewards/margins"] and logged[-1]["rewards/accuracies"] == 1.0
    chosen, rejected = (
        "Tom has 9 apples and buys 5 more. How many apples does Tom have?",
        "What is the sum of 9 and 30?",
    )
    before = margin(tiny_model_dir, prefix, chosen, rejected)
    after = margin(tmp_path / "qpo", prefix, chosen, rejected)
    assert after > before + 0.5


def test_dpo_pairs_are_tokenized_like_qft(tmp_path, tiny_model_dir, tiny_tokenizer):
    from trl import DPOConfig

    prefix = pre_query_prefix(tiny_tokenizer)
    dataset = qpo.build_dataset([{"prompt": prefix, "chosen": " Ann asks. ", "rejected": "Bob asks."}], "<|im_end|>")
    trainer = qpo.question_dpo_trainer_class()(
        model=str(tiny_model_dir),
        args=DPOConfig(output_dir=str(tmp_path / "x"), report_to="none", bf16=False, max_length=64),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    example = trainer.train_dataset[0]
    assert example["prompt_ids"] == tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(example["chosen_ids"]) == "Ann asks.<|im_end|>"  # one end-of-turn, no extra EOS
    assert tiny_tokenizer.decode(example["rejected_ids"]) == "Bob asks.<|im_end|>"


def test_no_usable_pair_fails_before_training(tmp_path, tiny_model_dir, tiny_tokenizer):
    prefix = pre_query_prefix(tiny_tokenizer)
    source = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": prefix, "chosen": "Same question?", "rejected": "same   question?"},
            {"prompt": prefix, "chosen": "", "rejected": "Another?"},
        ],
    )
    with pytest.raises(DataError, match=r"holds no usable preference pair \(1 identical, 1 empty\)"):
        qpo.run(qpo_config(tmp_path, tiny_model_dir, source))
    assert not (tmp_path / "qpo").exists()
    write_jsonl(source, [{"prompt": prefix, "chosen": "A?"}])
    with pytest.raises(DataError, match=r"row pairs-0 has no text field 'rejected'"):
        qpo.run(qpo_config(tmp_path, tiny_model_dir, source))


def test_warmup_is_steps_or_ratio():
    with pytest.raises(ValueError, match="either warmup_steps or warmup_ratio"):
        qpo.QPOConfig(input="x", output="y", warmup_ratio=0.1)
    config = qpo.QPOConfig(input="x", output="y", warmup_steps=0, warmup_ratio=0.1)
    assert config.batch_size * config.gradient_accumulation_steps == 128 and config.learning_rate == 5e-7
