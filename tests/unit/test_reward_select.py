"""reward-select: scoring (classifier, remote-code get_scores, vLLM), best-of-n selection, ties, agreement,
shards that never split a question, resumable score files, and one-line errors for unusable reward models.

Models are tiny and built here or in conftest: a 1-output LlamaForSequenceClassification, a remote-code model
whose own file defines get_scores (loaded through AutoModel + trust_remote_code from a local folder), and a
causal LM as the wrong kind of model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import VLLM_LLAMA, build_tiny_model_dir, build_tiny_tokenizer, write_jsonl
from scalequest.runner import run_row_stage
from scalequest import io
from scalequest.models import ModelError
from scalequest.scorers import Scorer, conversation, load_scorer, score_head_kind
from scalequest.scorers.base import render_ids
from scalequest.scorers.remote_code import RemoteCodeScorer
from scalequest.scorers.sequence_classification import ClassifierScorer, length_batches
from scalequest.stages.reward_select import (
    RewardModelConfig,
    RewardSelect,
    RewardSelectConfig,
    best_response,
    read_scores,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-reward"), head="classifier", seed=1)


PAIRS = [
    ("Tom has 3 apples and buys 5 more. How many apples does Tom have?", "3 + 5 = 8. The answer is \\boxed{8}."),
    ("Tom has 3 apples and buys 5 more. How many apples does Tom have?", "He has \\boxed{9}."),
    ("What is the sum of 12 and 30?", "12 + 30 = 42, so the sum is \\boxed{42}. " * 3),
    ("A train travels 60 miles per hour for 2 hours. How far does it go?", "60 * 2 = 120 miles. \\boxed{120}"),
    ("Find x if 2x + 3 = 11.", "2x = 8, x = 4. The answer is 4."),
    ("What is the sum of 12 and 30?", "\\boxed{42}"),
]


def one_at_a_time(model_dir: Path, chats) -> list[float]:
    """The official loop, independent of the stage's code: template -> ids -> forward -> logit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = []
    for chat in chats:
        inputs = tokenizer.apply_chat_template(chat, tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            scores.append(model(**inputs).logits[0][0].item())
    return scores


def responses(questions: int, per_question: int = 3) -> list[dict]:
    """Rows as generate-responses writes them: a question's responses together, ids q{i}-r{k}."""
    rows = []
    for q in range(questions):
        for k in range(per_question):
            rows.append(
                {
                    "id": f"q{q}-r{k}",
                    "question_id": f"q{q}",
                    "question": f"Question number {q}: what is {q} + {k}?",
                    "sample_index": k,
                    "response": f"Response {k} to question {q}. " * (k + 1) + f"\\boxed{{{q + k % 2}}}",
                    "answer": str(q + k % 2),
                    "generator": "gen-model",
                    "solver": "solver-model",
                }
            )
    return rows


# --- scoring --------------------------------------------------------------------------------------


def test_classifier_scores_match_the_one_at_a_time_loop_in_order(classifier_dir):
    chats = [conversation(q, r) for q, r in PAIRS]
    scorer = ClassifierScorer(RewardModelConfig(model=str(classifier_dir), dtype="float32", batch_size=1))
    got = scorer.score(chats)
    expected = one_at_a_time(classifier_dir, chats)
    assert got == pytest.approx(expected, abs=1e-6)
    assert len(set(round(s, 6) for s in got)) > 1  # a constant scorer would pass the comparison trivially
    assert scorer.tokens > 0


def test_length_batches_sort_longest_first_and_cap_padding():
    lengths = [100, 300, 95, 290, 280, 20, 99]
    assert list(length_batches(lengths, 2)) == [[1, 3], [4], [0, 6], [2], [5]]
    assert list(length_batches(lengths, 4)) == [[1, 3, 4], [0, 6, 2], [5]]
    assert list(length_batches([], 4)) == []


def test_batched_scores_equal_one_at_a_time(classifier_dir):
    # Similar lengths, so they really share batches (a batch never pads more than 10%), plus odd ones out.
    chats = [conversation(PAIRS[0][0], f"Step {k}: 3 + 5 = 8 apples in all, so \\boxed{{{k}}}.") for k in range(6)]
    chats += [conversation(q, r) for q, r in PAIRS]
    scorer = ClassifierScorer(RewardModelConfig(model=str(classifier_dir), dtype="float32", batch_size=4))
    lengths = [len(render_ids(scorer.tokenizer, chat)) for chat in chats]
    assert max(len(batch) for batch in length_batches(lengths, 4)) == 4
    single = ClassifierScorer(RewardModelConfig(model=str(classifier_dir), dtype="float32", batch_size=1)).score(chats)
    batched = scorer.score(chats)
    assert batched == pytest.approx(single, abs=1e-4)
    assert batched == pytest.approx(one_at_a_time(classifier_dir, chats), abs=1e-4)
    # bfloat16 on CPU (the stage's default here) stays close too
    bf16 = ClassifierScorer(RewardModelConfig(model=str(classifier_dir), dtype="bfloat16", batch_size=4)).score(chats)
    assert bf16 == pytest.approx(single, abs=0.05)


def test_ties_go_to_the_lowest_sample_index_and_nan_ranks_last():
    group = [{"sample_index": 2}, {"sample_index": 0}, {"sample_index": 1}]
    assert best_response(group, [1.0, 1.0, 0.5]) == 1  # sample 0 wins the tie between samples 2 and 0
    assert best_response(group, [0.5, 1.0, 1.0]) == 1
    assert best_response(group, [math.nan, 0.1, -5.0]) == 1
    assert best_response([{}, {}], [3.0, 3.0]) == 0  # no sample_index: input order


# --- selection through the stage --------------------------------------------------------------------


class CannedScorer(Scorer):
    """Scores set by the test: the response's number of characters, or a fixed table."""

    def __init__(self, table: dict[str, float] | None = None):
        self.table = table or {}
        self.calls: list[int] = []

    def score(self, conversations):
        self.calls.append(len(conversations))
        self.tokens += len(conversations)
        return [self.table.get(chat[1]["content"], float(len(chat[1]["content"]))) for chat in conversations]

    def close(self) -> None:
        pass


def canned_stage(scorer: Scorer):
    class Canned(RewardSelect):
        def setup(self) -> None:
            self.scorer = scorer

    return Canned


def select_config(source: Path, output: Path, model_dir: Path, **overrides) -> RewardSelectConfig:
    return RewardSelectConfig(
        input=source, output=output, progress=False, reward={"model": str(model_dir)}, **overrides
    )


def test_best_of_n_keeps_the_highest_score_per_question(tmp_path, classifier_dir):
    rows = responses(4)
    source = write_jsonl(tmp_path / "responses.jsonl", rows)
    # Question 1: a tie between samples 2 and 1 -> sample 1 (lowest sample_index).
    tie = {rows[4]["response"]: 100.0, rows[5]["response"]: 100.0}
    manifest = run_row_stage(canned_stage(CannedScorer(tie)), select_config(source, tmp_path / "out", classifier_dir))
    out = io.load_rows(tmp_path / "out")
    assert [r["id"] for r in out] == ["q0", "q1", "q2", "q3"]
    assert [r["sample_index"] for r in out] == [2, 1, 2, 2]  # the longest response wins, except the tie
    assert out[1]["reward_score"] == 100.0 and out[1]["response_id"] == "q1-r1"
    assert all(r["candidates"] == 3 and r["generator"] == "gen-model" for r in out)
    assert manifest["rows_in"] == 12 and manifest["rows_out"] == 4
    assert manifest["dropped"] == {"lower_reward": 8}
    assert manifest["counts"]["questions"] == 4
    assert manifest["tokens_in"] == 12
    scores = read_scores(tmp_path / "out")
    assert [s["id"] for s in scores] == [r["id"] for r in rows]
    assert [s["id"] for s in scores if s["selected"]] == ["q0-r2", "q1-r1", "q2-r2", "q3-r2"]


def test_min_agreement_drops_questions_whose_answers_disagree(tmp_path, classifier_dir):
    rows = responses(3)  # answers per question: q, q+1, q -> 2 of 3 agree
    rows[3]["answer"], rows[5]["answer"] = "7", " 9 "  # question 1: three different answers
    source = write_jsonl(tmp_path / "responses.jsonl", rows)
    manifest = run_row_stage(
        canned_stage(CannedScorer()), select_config(source, tmp_path / "out", classifier_dir, min_agreement=2)
    )
    out = io.load_rows(tmp_path / "out")
    assert [r["id"] for r in out] == ["q0", "q2"]
    assert manifest["dropped"] == {"low_agreement": 3, "lower_reward": 4}
    assert manifest["counts"]["questions_low_agreement"] == 1
    scores = read_scores(tmp_path / "out")  # the dropped question's scores are kept with its removed rows
    assert sorted(s["id"] for s in scores if s["question_id"] == "q1") == ["q1-r0", "q1-r1", "q1-r2"]
    assert out[0]["answer_agreement"] == 2  # sample 2 answers q0 like sample 0


def test_shards_never_split_a_question(tmp_path, classifier_dir):
    source = write_jsonl(tmp_path / "responses.jsonl", responses(5))
    scorer = CannedScorer()
    config = select_config(source, tmp_path / "out", classifier_dir, shard_size=4)
    shards = list(RewardSelect(config).input_shards())
    for shard in shards:
        ids = [row["question_id"] for row in shard.rows]
        assert len(ids) % 3 == 0 and len(set(ids)) == len(ids) // 3
    assert sum(len(s.rows) for s in shards) == 15
    manifest = run_row_stage(canned_stage(scorer), config)
    assert manifest["rows_out"] == 5 and manifest["shards"] == len(shards) == 3


def test_responses_of_a_question_out_of_place_is_an_error_before_any_output(tmp_path, classifier_dir):
    rows = responses(2)
    rows.append({**rows[0], "id": "q0-r9", "sample_index": 9})
    source = write_jsonl(tmp_path / "responses.jsonl", rows)
    with pytest.raises(io.DataError, match=r"q0-r9.*'q0' are not next to each other"):
        run_row_stage(canned_stage(CannedScorer()), select_config(source, tmp_path / "out", classifier_dir))
    assert not (tmp_path / "out").exists()


def test_scores_are_kept_with_the_rows_and_resumable_per_shard(tmp_path, classifier_dir):
    source = write_jsonl(tmp_path / "responses.jsonl", responses(4))
    config = select_config(source, tmp_path / "out", classifier_dir, shard_size=6)
    run_row_stage(canned_stage(CannedScorer()), config)
    removed_dir = tmp_path / "out" / "removed"
    first = {p.name: p.stat().st_mtime_ns for p in removed_dir.iterdir()}
    assert sorted(first) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert not (tmp_path / "out" / "scores").exists()  # no side files of its own
    # A run killed after shard 0: shard 1's rows and manifest gone, a half-written removed file left.
    (tmp_path / "out" / "shard-00001.jsonl").unlink()
    (tmp_path / "out" / "manifest.json").unlink()
    (removed_dir / ".shard-00001.jsonl.tmp-1").write_text("{half")
    scorer = CannedScorer()
    manifest = run_row_stage(canned_stage(scorer), config)
    assert scorer.calls == [6]  # only shard 1 scored again
    assert (removed_dir / "shard-00000.jsonl").stat().st_mtime_ns == first["shard-00000.jsonl"]
    assert not list(removed_dir.glob(".*tmp*"))
    assert len(read_scores(tmp_path / "out")) == 12 and manifest["rows_out"] == 4
    for row in io.load_rows(tmp_path / "out"):  # the chosen response's margin can be read from its own row
        assert row["candidate_scores"][row["response_id"]] == max(row["candidate_scores"].values())
    for entry in io.read_removed(tmp_path / "out"):
        assert entry["reason"] == "lower_reward" and entry["evidence"]["score"] <= entry["evidence"]["chosen_score"]


def test_stage_with_the_tiny_classifier_selects_the_argmax_of_real_scores(tmp_path, classifier_dir):
    rows = responses(2)
    source = write_jsonl(tmp_path / "responses.jsonl", rows)
    config = select_config(source, tmp_path / "out", classifier_dir)
    config.reward.dtype = "float32"
    manifest = run_row_stage(RewardSelect, config)
    expected = one_at_a_time(classifier_dir, [conversation(r["question"], r["response"]) for r in rows])
    scores = read_scores(tmp_path / "out")
    assert [s["score"] for s in scores] == pytest.approx(expected, abs=1e-4)
    out = io.load_rows(tmp_path / "out")
    for q, row in enumerate(out):
        best = max(range(3), key=lambda k: expected[3 * q + k])
        assert row["sample_index"] == best
    assert manifest["reward_model"] == str(classifier_dir) and manifest["tokens_in"] > 0


# --- models that cannot score -------------------------------------------------------------------------


def test_a_causal_lm_is_refused_with_advice_before_any_output(tmp_path, tiny_model_dir):
    source = write_jsonl(tmp_path / "responses.jsonl", responses(1))
    with pytest.raises(
        ModelError,
        match=r"has no score head \(architectures: LlamaForCausalLM\).*sequence-classification.*trust_remote_code",
    ):
        run_row_stage(RewardSelect, select_config(source, tmp_path / "out", tiny_model_dir))
    assert not (tmp_path / "out").exists()


def test_a_classifier_checkpoint_without_head_weights_is_refused(tmp_path, tiny_model_dir):
    """A causal LM's weights with a config that claims a classifier: the score head would be random."""
    import shutil

    folder = tmp_path / "no-head"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"], num_labels=1)
    (folder / "config.json").write_text(json.dumps(config))
    assert score_head_kind(RewardModelConfig(model=str(folder))) == "classifier"
    with pytest.raises(ModelError, match="has no trained score head"):
        load_scorer(RewardModelConfig(model=str(folder)))


def test_unfinished_input_names_the_stage(tmp_path, classifier_dir):
    folder = tmp_path / "responses"
    write_jsonl(folder / "shard-00000.jsonl", responses(1))
    (folder / "config.yaml").write_text("stage: generate-responses\nrun_hash: x\n")
    with pytest.raises(io.DataError, match=r"stage 'generate-responses', which has not finished"):
        run_row_stage(RewardSelect, select_config(folder, tmp_path / "out", classifier_dir))


# --- remote-code reward models (get_scores), like InternLM2-7B-Reward --------------------------------

REMOTE_CODE = """
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyRewardConfig(PretrainedConfig):
    model_type = "tiny-get-scores-reward"

    def __init__(self, vocab_size=512, hidden_size=8, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)


class TinyRewardModel(PreTrainedModel):
    config_class = TinyRewardConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.v_head = torch.nn.Linear(config.hidden_size, 1, bias=False)
        self.post_init()

    def forward(self, input_ids):
        return self.v_head(self.embed(input_ids).mean(dim=1))[:, 0]

    def get_score(self, tokenizer, conversation):
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return self.forward(ids).item()

    def get_scores(self, tokenizer, conversations):
        # Squeezed like InternLM2-7B-Reward's: a single conversation comes back as a bare float.
        return torch.tensor([self.get_score(tokenizer, c) for c in conversations]).squeeze().tolist()
"""


@pytest.fixture(scope="module")
def remote_code_dir(tmp_path_factory) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("tiny-remote-reward")
    (folder / "modeling_tiny_reward.py").write_text(REMOTE_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tiny_reward_in_test", folder / "modeling_tiny_reward.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    tokenizer = build_tiny_tokenizer()
    config = module.TinyRewardConfig(vocab_size=len(tokenizer))
    config.architectures = ["TinyRewardModel"]
    config.auto_map = {
        "AutoConfig": "modeling_tiny_reward.TinyRewardConfig",
        "AutoModel": "modeling_tiny_reward.TinyRewardModel",
    }
    torch.manual_seed(0)
    module.TinyRewardModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_remote_code_model_needs_trust_remote_code(remote_code_dir):
    with pytest.raises(ModelError, match="ships its own code; set reward.trust_remote_code: true"):
        score_head_kind(RewardModelConfig(model=str(remote_code_dir)))


def test_remote_code_get_scores_match_its_own_get_score(remote_code_dir):
    from transformers import AutoModel, AutoTokenizer

    config = RewardModelConfig(model=str(remote_code_dir), trust_remote_code=True, dtype="float32", batch_size=4)
    scorer = load_scorer(config)
    assert isinstance(scorer, RemoteCodeScorer)
    chats = [conversation(q, r) for q, r in PAIRS[:5]]  # batches of 4 and 1: the bare-float case
    got = scorer.score(chats)
    model = AutoModel.from_pretrained(remote_code_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(remote_code_dir)
    assert got == pytest.approx([model.get_score(tokenizer, chat) for chat in chats], abs=1e-6)
    assert len(set(round(s, 6) for s in got)) > 1


# --- vLLM pooling runner (GPU users; skipped without vllm) -------------------------------------------


@pytest.mark.slow
def test_vllm_scores_match_transformers(tmp_path, tiny_tokenizer):
    pytest.importorskip("vllm")
    # VLLM_LLAMA: vLLM's CPU attention rejects the head_dim 8 of conftest's default. Untied embeddings, as
    # LlamaConfig has by default: this test has always scored an untied classifier.
    build_tiny_model_dir(
        tmp_path / "model", head="classifier", tokenizer=tiny_tokenizer, **VLLM_LLAMA, tie_word_embeddings=False
    )
    chats = [conversation(q, r) for q, r in PAIRS]
    expected = ClassifierScorer(RewardModelConfig(model=str(tmp_path / "model"), dtype="float32")).score(chats)
    scorer = load_scorer(
        RewardModelConfig(
            backend="vllm",
            model=str(tmp_path / "model"),
            dtype="float32",
            max_model_len=512,
            engine_kwargs={"enforce_eager": True},
        )
    )
    try:
        got = scorer.score(chats)
    finally:
        scorer.close()
    assert got == pytest.approx(expected, abs=1e-3, rel=1e-3)
