"""benchmarks/int8_accuracy.py: int8 rounding with per-channel / per-token / per-tensor scales, and
the whole script on a tiny saved FacePhi model (its agreement lines and margin table)."""

from __future__ import annotations

import re

import pytest
import torch
from benchmark_loader import load_benchmark

pytestmark = pytest.mark.timeout(600)


def test_int8_rounding_keeps_each_slice_within_half_a_step_of_its_own_scale():
    bench = load_benchmark("int8_accuracy")
    x = torch.tensor([[0.1, -2.0, 0.3], [100.0, 1.0, -0.5]])
    per_row = bench.round_int8(x, dim=-1)
    steps = x.abs().amax(-1, keepdim=True) / 127
    assert bool(((per_row - x).abs() <= steps / 2 + 1e-7).all())
    assert per_row[0, 0] != 0  # the small row keeps its own scale
    per_tensor = bench.round_int8(x, dim=None)
    assert per_tensor[0, 0] == 0  # one scale for both rows: 0.1 is under half of 100 / 127
    assert torch.equal(bench.round_int8(per_row, dim=-1), per_row)  # already on the grid


def test_int8_accuracy_script_reports_every_scheme(tmp_path, capsys):
    from test_evaluate import tiny_facephi
    from train_fixtures import write_landmark_set

    model = tiny_facephi(tmp_path / "models" / "facephi")
    ferplus = write_landmark_set(tmp_path / "ferplus", {"train": 4, "valid": 2, "test": 3})
    web = write_landmark_set(tmp_path / "web", {"train": 3}, seed=1)
    out = tmp_path / "int8.md"
    bench = load_benchmark("int8_accuracy")
    assert bench.main(["--model", str(model), "--ferplus", str(ferplus), "--web", str(web), "--faces", "3",
                       "--threads", "1", "--out", str(out)]) == 0
    text = out.read_text()
    values = re.findall(r"^int8_class_agreement\[(.+), (.+)\]=([0-9.]+)$", text, re.M)
    assert {scheme for scheme, _, _ in values} == set(bench.SCHEMES[1:])
    assert {name for _, name, _ in values} == {"FER+ Test", "web-dev"}
    assert all(0.0 <= float(v) <= 1.0 for *_, v in values)
    assert "float32's own margins" in text and "| weight-only int8 | FER+ Test | 3 |" in text
    assert bench.main(["--model", str(tmp_path / "nope"), "--faces", "3"]) == 2
    assert "no config.json (--model)" in capsys.readouterr().err
