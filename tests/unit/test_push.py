"""push_to_hub of a trained model (scalequest.training, scalequest.hub): against a stubbed huggingface_hub API that
records what would be sent, nothing leaves this machine. The model is SFT's on a tiny random model, one step."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from scalequest.cli import EXIT_BAD_INPUT, main
from scalequest.config import ConfigError
from scalequest.hub import base_model
from scalequest.models import EMBEDDED_HUB_ID
from scalequest.pipeline import run_pipeline
from scalequest.stages import sft
from scalequest.training import PUSH_IGNORE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def hub_api(monkeypatch):
    """A fake HfApi: create_repo and upload_folder calls, with the files upload_folder would send."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs):
            folder = kwargs["folder_path"]
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            sent = filter_repo_objects(
                files, allow_patterns=kwargs["allow_patterns"], ignore_patterns=kwargs["ignore_patterns"]
            )
            calls.append(("upload_folder", {**kwargs, "files": sorted(sent)}))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return calls


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere huggingface_hub looks: not in the environment, not stored by a login."""
    import huggingface_hub

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    assert huggingface_hub.get_token() is None


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a card that states its license, as a downloaded model has."""
    folder = tmp_path_factory.mktemp("base") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# a tiny model\n")
    return folder


def sft_config(tmp_path, model, **overrides):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"What is {i} plus {i}?", "response": f"{i} plus {i} is {2 * i}. \\boxed{{{2 * i}}}"}
        for i in range(4)
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    values = dict(
        input=pairs,
        output=tmp_path / "sft",
        model=str(model),
        max_steps=1,
        batch_size=2,
        max_length=64,
        logging_steps=1,
        progress=False,
    )
    return sft.SFTStageConfig(**{**values, **overrides})


def test_a_trained_model_is_pushed_with_a_card_and_without_its_checkpoints(tmp_path, base_dir, hub_api):
    config = sft_config(tmp_path, base_dir, push_to_hub="me/tiny-sft", private=True, keep_checkpoints=True)
    manifest = sft.run(config)
    assert [name for name, _ in hub_api] == ["create_repo", "upload_folder"]
    assert hub_api[0][1] == {"repo_id": "me/tiny-sft", "repo_type": "model", "private": True, "exist_ok": True}
    upload = hub_api[1][1]
    assert (
        upload["repo_id"] == "me/tiny-sft" and upload["repo_type"] == "model" and upload["folder_path"] == config.output
    )
    assert upload["allow_patterns"] is None and upload["ignore_patterns"] == PUSH_IGNORE
    sent = upload["files"]
    for name in ("model.safetensors", "config.json", "tokenizer.json", "manifest.json", "config.yaml", "README.md"):
        assert name in sent
    assert (config.output / "checkpoints").is_dir() and not any(name.startswith("checkpoints/") for name in sent)
    assert not any(name.startswith(".") or "/." in name for name in sent)  # the .lock, temporary files
    assert (config.output / "log.txt").is_file() and "log.txt" not in sent  # it names local paths
    # The card: the base model's license, the stage, the data, the training figures from the manifest.
    from huggingface_hub import ModelCard

    card = ModelCard.load(config.output / "README.md")
    assert card.data.license == "mit" and card.data.base_model is None  # a local base model: not a Hub link
    assert card.data.pipeline_tag == "text-generation" and "sft" in card.data.tags
    assert "# me/tiny-sft" in card.text and "`pairs.jsonl`, local data" in card.text
    assert f"| optimizer steps | {manifest['steps']} |" in card.text and "| mean training loss |" in card.text
    assert "AutoModelForCausalLM" in card.text and str(tmp_path) not in card.text  # no local path on the Hub
    assert "hf_not_a_real_token" not in card.text + (config.output / "config.yaml").read_text()


def test_a_rerun_of_a_finished_stage_still_pushes(tmp_path, tiny_model_dir, hub_api):
    sft.run(sft_config(tmp_path, tiny_model_dir))
    assert hub_api == []
    before = (tmp_path / "sft" / "manifest.json").stat().st_mtime_ns
    config = sft_config(tmp_path, tiny_model_dir, push_to_hub="me/tiny-sft")
    assert config.config_hash() == sft_config(tmp_path, tiny_model_dir).config_hash()  # an operational field
    sft.run(config)
    assert (tmp_path / "sft" / "manifest.json").stat().st_mtime_ns == before  # not retrained
    assert hub_api[0][1]["private"] is False and hub_api[1][1]["repo_id"] == "me/tiny-sft"
    assert "model.safetensors" in hub_api[1][1]["files"] and "README.md" in hub_api[1][1]["files"]


def test_without_a_token_the_stage_fails_in_one_line_before_any_output(tmp_path, tiny_model_dir, no_token, capsys):
    config = sft_config(tmp_path, tiny_model_dir, push_to_hub="me/tiny-sft")
    with pytest.raises(ConfigError, match="set HF_TOKEN"):
        sft.run(config)
    assert not config.output.exists()
    code = main(["sft", f"input={config.input}", f"output={config.output}", "push_to_hub=me/tiny-sft", "max_steps=1"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT and len(err.splitlines()) == 1 and "HF_TOKEN" in err
    assert not config.output.exists()


def test_a_pipeline_that_pushes_without_a_token_fails_before_its_first_stage(tmp_path, no_token):
    pipeline = tmp_path / "pipeline.yaml"
    stages = {
        "filter-language": {"input": {"bundled": "arithmetic_test"}},
        "sft": {"input": {"bundled": "arithmetic_train"}, "push_to_hub": "me/sft"},
    }
    pipeline.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    with pytest.raises(ConfigError, match="push_to_hub=me/sft needs a Hugging Face token"):
        run_pipeline(pipeline)
    assert not (tmp_path / "run").exists()


def test_the_card_names_the_model_a_stage_output_was_trained_from(tmp_path):
    def stage(name, config):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"stage": name, "config": config}))
        return str(folder)

    qft = stage("qft", {"model": "embedded"})
    assert base_model(qft) == (EMBEDDED_HUB_ID, None, True, EMBEDDED_HUB_ID)  # followed back to the Hub model
    pushed = stage("qft-pushed", {"model": "Qwen/Qwen2-Math-7B-Instruct", "revision": "v1", "push_to_hub": "me/qft"})
    assert base_model(pushed) == ("me/qft", None, True, "Qwen/Qwen2-Math-7B-Instruct")  # the pushed repo
    assert base_model("Qwen/Qwen2-Math-7B", "main") == ("Qwen/Qwen2-Math-7B", "main", True, "Qwen/Qwen2-Math-7B")
    assert base_model(str(tmp_path)) == (str(tmp_path), None, False, str(tmp_path))  # a plain local folder
