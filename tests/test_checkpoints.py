"""Model folders are checked complete before anything heavy is loaded; atomic folder writes."""

import json
import shutil

import pytest
from tiny_models import TinyEncoder, tiny_llm, tiny_tokenizer

import facephi.model.facephi as facephi_module
import facephi.model.saving as saving_module
import facephi.model.llm as llm_module
from facephi.model.checkpoints import ENCODER, FACEPHI, check_model_dir, checkpoint_type
from facephi.model.facephi import FacePhiConfig, FacePhiModel
from facephi.model.llm import check_language_model
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny FacePhi model referencing a base LLM folder (not copied into the model)."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = tiny_tokenizer("llama")
    llm = tiny_llm("llama", tokenizer)
    llm.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    model = FacePhiModel(FacePhiConfig(llm=str(root / "base"), max_length=96), TinyEncoder(), llm, tokenizer)
    model.save_pretrained(root / "model")
    return root


@pytest.fixture
def copy(saved, tmp_path):
    """A fresh copy of the saved model and its base LLM (the test may break it)."""
    shutil.copytree(saved / "base", tmp_path / "base")
    shutil.copytree(saved / "model", tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["llm"] = str(tmp_path / "base")
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    return tmp_path / "model"


@pytest.fixture
def no_llm_loading(monkeypatch):
    """Fail the test if a language model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a language model was loaded before the folder was checked")

    for module in (facephi_module, saving_module, llm_module):
        monkeypatch.setattr(module, "load_language_model", refuse)
    for module in (saving_module, llm_module):
        monkeypatch.setattr(module, "load_causal_lm", refuse)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(FacePhiError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_complete_model_passes(copy):
    assert check_model_dir(copy) == FACEPHI
    assert checkpoint_type(copy) == FACEPHI


def test_missing_projector_is_reported_before_any_llm_is_loaded(copy, no_llm_loading):
    from facephi.serve.predict import Predictor

    (copy / "projector.safetensors").unlink()
    for call in (FacePhiModel.from_pretrained, Predictor.from_pretrained):
        message = one_line_error(call, copy)
        assert message.startswith(str(copy / "projector.safetensors")) and "missing" in message


@pytest.mark.parametrize("relative", ["projector.safetensors", "encoder/model.safetensors"])
def test_truncated_safetensors_file_is_a_one_line_error(copy, no_llm_loading, relative):
    path = copy / relative
    path.write_bytes(path.read_bytes()[:-7])
    message = one_line_error(FacePhiModel.from_pretrained, copy)
    assert message.startswith(f"{path}: unreadable safetensors file (")


def test_incomplete_tokenizer_llm_and_adapter_are_named(copy, no_llm_loading):
    (copy / "tokenizer" / "tokenizer.json").unlink()
    assert "tokenizer" in one_line_error(check_model_dir, copy)
    shutil.rmtree(copy / "tokenizer")
    assert one_line_error(check_model_dir, copy).startswith(f"{copy / 'tokenizer'}: missing")

    shutil.copytree(copy.parent / "base", copy / "tokenizer")  # has the tokenizer files
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "llm_weights": "full"}))
    assert one_line_error(check_model_dir, copy).startswith(f"{copy / 'llm'}: missing")
    (copy / "config.json").write_text(json.dumps({**config, "llm_weights": "lora"}))
    assert one_line_error(check_model_dir, copy).startswith(f"{copy / 'adapter' / 'adapter.safetensors'}: missing")


def test_bad_config_json_is_named(copy):
    (copy / "config.json").write_text("{not json")
    assert one_line_error(check_model_dir, copy).startswith(f"{copy / 'config.json'}: invalid JSON")
    (copy / "config.json").write_bytes(b'{"llm": "\xff"}')
    assert one_line_error(check_model_dir, copy).startswith(f"{copy / 'config.json'}: not a UTF-8")
    (copy / "config.json").write_text("[1, 2]")
    assert "expected a JSON object" in one_line_error(check_model_dir, copy)


def test_training_run_folder_points_to_its_model(copy, no_llm_loading, capsys):
    from facephi.cli import main

    run = copy.parent / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"train": {"stage": 1}, "sources": {}}))
    (run / "run.json").write_text("{}")
    shutil.move(copy, run / "final")
    expected = f"{run} is a training run folder, not a model; the model is in {run / 'final'}"
    assert one_line_error(check_model_dir, run, "--init") == f"{expected} (--init)"
    assert one_line_error(FacePhiModel.from_pretrained, run) == expected
    assert main(["predict", "--model", str(run), "whatever.npy"]) == 2
    assert f"{expected} (--model)" in capsys.readouterr().err

    (run / "config.json").unlink()  # an interrupted run before its config, or one with no final model
    assert one_line_error(check_model_dir, run).startswith(expected)
    shutil.rmtree(run / "final")
    assert "holds no finished model yet" in one_line_error(check_model_dir, run)


def test_moved_base_llm_is_a_clear_error(copy, no_llm_loading):
    base = copy.parent / "base"
    base.rename(copy.parent / "elsewhere")
    message = one_line_error(FacePhiModel.from_pretrained, copy)
    assert message == f"model {copy} uses the base LLM {base}, which does not exist (moved?)"
    assert "Repo id" not in message


def test_base_llm_folder_without_weights_or_with_a_broken_file(copy, no_llm_loading):
    base = copy.parent / "base"
    (base / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    assert one_line_error(check_model_dir, copy).startswith(f"{base / 'model.safetensors'}: unreadable safetensors")
    (base / "model.safetensors").unlink()
    assert one_line_error(check_model_dir, copy) == (
        f"model {copy} uses the base LLM {base}, which has no model weights "
        "(model.safetensors, model.safetensors.index.json)")


def test_check_language_model(tmp_path):
    check_language_model("smollm2-135m-instruct")  # the embedded default
    with pytest.raises(FacePhiError, match=r"^language model /no/such/llm does not exist \(moved\?\)$"):
        check_language_model("/no/such/llm")
    with pytest.raises(FacePhiError, match="not an embedded model.*local Hugging Face cache.*nothing is downloaded"):
        check_language_model("facephi-tests/no-such-model")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FacePhiError, match="has no config.json"):
        check_language_model(str(tmp_path / "folder"))
    with pytest.raises(FacePhiError, match="has no GGUF file x.gguf"):
        check_language_model(str(tmp_path / "folder"), "x.gguf")
    (tmp_path / "folder" / "x.gguf").write_bytes(b"GGUF")
    check_language_model(str(tmp_path / "folder"), "x.gguf")
    check_language_model(str(tmp_path / "folder" / "x.gguf"))
    # loading a moved folder says so too, not "Repo id must be ..."
    with pytest.raises(FacePhiError, match=r"does not exist \(moved\?\)"):
        llm_module.load_language_model(str(tmp_path / "moved" / "llm"))


def test_encoder_folders_and_kind_mismatches(copy, tmp_path):
    from facephi.model.encoder import LandmarkEncoder
    from train_fixtures import write_encoder

    align_run = write_encoder(tmp_path / "align")  # `facephi align` output: the folder is the encoder
    (align_run / "run.json").write_text("{}")
    (align_run / "checkpoints" / "step-0000004").mkdir(parents=True)
    assert check_model_dir(align_run, "--encoder") == ENCODER
    assert LandmarkEncoder.from_pretrained(align_run).objective == "classify"
    assert one_line_error(LandmarkEncoder.from_pretrained, copy) == (
        f"{copy} is a FacePhi model, not a landmark encoder; its encoder is {copy / 'encoder'}")
    assert "config_type 'facephi-landmark-encoder'" in one_line_error(FacePhiModel.from_pretrained, align_run)
    assert one_line_error(check_model_dir, tmp_path / "absent", "--encoder") == f"{tmp_path / 'absent'}: not found (--encoder)"


def test_atomic_dir_replaces_on_success_and_keeps_the_old_folder_on_error(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.") and not list(staging.iterdir())
        (staging / "a.txt").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a.txt"]

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as staging:
            (staging / "b.txt").write_text("second")
            raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["a.txt"] and (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind

    with atomic_dir(target) as staging:
        (staging / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # the old content is gone, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_kind_is_read_from_config_type_never_guessed_from_fields(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["config_type"]  # llm + projector fields alone no longer make a FacePhi model
    (copy / "config.json").write_text(json.dumps(config))
    assert one_line_error(checkpoint_type, copy) == (
        f"{copy / 'config.json'}: config_type None is neither a FacePhi model ('facephi') nor a landmark "
        "encoder ('facephi-landmark-encoder')")
    config["model_type"] = "facephi"  # nor from model_type
    (copy / "config.json").write_text(json.dumps(config))
    assert "config_type None is neither" in one_line_error(checkpoint_type, copy)


def test_the_shipped_model_and_its_encoder_still_check_and_load():
    from facephi.model.defaults import SHIPPED_MODEL as shipped
    from facephi.model.encoder import LandmarkEncoder

    assert check_model_dir(shipped) == FACEPHI
    assert check_model_dir(shipped / "encoder", "--encoder") == ENCODER
    encoder = LandmarkEncoder.from_pretrained(shipped / "encoder")
    assert encoder.config.objective in ("align", "classify") and encoder.normalizer is not None
    assert FacePhiConfig.from_dict(json.loads((shipped / "config.json").read_text())).llm
