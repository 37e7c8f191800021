"""benchmarks/train_preset.py: both stages timed, the model evaluated, a rerun that reuses finished work."""

from __future__ import annotations

import json

from benchmark_loader import load_benchmark
from train_fixtures import write_encoder, write_landmark_set, write_llm


def test_both_stages_then_both_evaluation_modes_and_a_rerun_reuses_them(tmp_path, capsys):
    data = write_landmark_set(tmp_path / "data", {"train": 48, "valid": 8, "test": 8})
    encoder, llm = write_encoder(tmp_path / "encoder"), write_llm(tmp_path / "llm")
    run, out = tmp_path / "run", tmp_path / "report.md"
    args = ["--data", str(data), "--encoder", str(encoder), "--llm", str(llm), "--run", str(run), "--out", str(out),
            "--preset", "cpu", "--limit-train", "48", "--epochs", "1", "--grad-accum", "2", "--eval-limit", "0",
            "--eval-mode", "both", "--eval-batch-size", "4", "--threads", "1", "--no-progress"]
    module = load_benchmark("train_preset")
    assert module.cli(args) == 0
    report = out.read_text()
    assert "| 1 | 48 | batch 48, 1 epoch(s)" in report and "| 2 | 32 | batch 32, 1 epoch(s)" in report
    assert "Final model on 8 Test faces" in report and "on cpu." in report
    assert "Class scoring (argmax of the 8 answer likelihoods)" in report and "agree on" in report
    stage2 = json.loads((run / "stage2_timing.json").read_text())
    assert stage2["config"]["grad_accum"] == 2 and stage2["config"]["epochs"] == 1
    assert json.loads((run / "eval" / "metrics.json").read_text())["settings"]["mode"] == "both"

    timing = (run / "stage1_timing.json").read_text()
    out.unlink()
    assert module.cli(args) == 0  # finished stages and evaluation are reused, not redone
    assert (run / "stage1_timing.json").read_text() == timing and out.read_text() == report


def test_a_wrong_device_stops_before_any_training(tmp_path, capsys):
    data = write_landmark_set(tmp_path / "data", {"train": 48, "valid": 8, "test": 8})
    args = ["--data", str(data), "--encoder", str(write_encoder(tmp_path / "encoder")), "--run", str(tmp_path / "run"),
            "--out", str(tmp_path / "report.md"), "--device", "nonsense"]
    assert load_benchmark("train_preset").cli(args) == 2
    assert "train_preset.py: error: device (--device) 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
