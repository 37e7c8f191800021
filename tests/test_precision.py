"""Inference precision (facephi.model.precision, FacePhiModel.set_precision, FacePhi(precision=...))."""

from __future__ import annotations

import pytest
import torch

from facephi.model.precision import PRECISIONS, cpu_has_bf16, resolve_precision
from facephi.utils.errors import FacePhiError


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n"
                         "processor\t: 1\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    amx = tmp_path / "amx"
    amx.write_text("flags : fpu amx_tile amx_bf16\n")
    assert cpu_has_bf16(str(with_bf16)) and cpu_has_bf16(str(amx))
    assert not cpu_has_bf16(str(without)) and not cpu_has_bf16(str(tmp_path / "missing"))


def test_resolve_precision(monkeypatch):
    import facephi.model.precision as precision

    assert resolve_precision("float32", "cpu") == "float32" and resolve_precision("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", torch.device("cpu")) == "float32"
    with pytest.raises(FacePhiError, match="precision must be one of auto, float32, bfloat16, int8, got 'fp8'"):
        resolve_precision("fp8", "cpu")
    assert resolve_precision("int8", "cpu") == "int8"
    with pytest.raises(FacePhiError, match="int8 weights run on the CPU only, not on cuda"):
        resolve_precision("int8", torch.device("cuda"))
    assert PRECISIONS[0] == "auto"


def test_bfloat16_model_scores_close_to_float32(tmp_path):
    from test_evaluate import tiny_facephi

    model = tiny_facephi(tmp_path / "m", save=False).eval()
    points = torch.rand(3, 478, 3) * 2 - 1
    instructions = ["What emotion is shown?"] * 3
    reference = model.class_probabilities(points, instructions)
    assert model.set_precision("bfloat16") == "bfloat16"
    assert model.llm.dtype == torch.bfloat16 and model.projector.net[0].weight.dtype == torch.bfloat16
    assert next(model.encoder.parameters()).dtype == torch.float32
    lowered = model.class_probabilities(points, instructions)
    assert lowered.dtype == torch.float32 and torch.allclose(lowered.sum(-1), torch.ones(3))
    assert (lowered - reference).abs().max() < 0.05
    assert len(model.answer(points, instructions, max_new_tokens=3)) == 3
    assert model.set_precision("float32") == "float32" and model.llm.dtype == torch.float32


def test_api_refuses_an_unknown_precision_before_loading(tmp_path):
    from facephi import FacePhi

    with pytest.raises(FacePhiError, match="precision must be one of"):
        FacePhi.from_pretrained(tmp_path / "absent", precision="half")


def test_api_reports_its_precision(tmp_path):
    from facephi import FacePhi
    from test_evaluate import tiny_facephi

    path = tiny_facephi(tmp_path / "m")
    with FacePhi.from_pretrained(path, precision="bfloat16") as model:
        assert model.precision == "bfloat16"
        row = model.predict_one(torch.rand(478, 3).numpy() * 100)
        assert abs(sum(row["scores"].values()) - 1) < 1e-3
    with FacePhi.from_pretrained(path) as model:  # float32 unless asked: the same numbers on every machine
        assert model.precision == "float32"


def test_cli_refuses_an_unknown_precision(tmp_path, capsys):
    from facephi.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse
        main(["predict", "--precision", "half", str(tmp_path / "x.npy")])
    assert exit_info.value.code == 2 and "--precision: invalid choice: 'half'" in capsys.readouterr().err


def test_device_names_resolve_once_with_one_clear_error():
    from facephi.model.precision import module_device, resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(torch.device("cpu")).type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu") == resolve_device(None).type
    with pytest.raises(FacePhiError, match=r"^device \(--device\) 'nonsense': "):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(FacePhiError, match="^device cuda:1: CUDA is not available on this machine"):
            resolve_device("cuda:1", what="device")
    assert module_device(torch.nn.Linear(2, 2)).type == "cpu" and module_device(torch.nn.ReLU()).type == "cpu"
