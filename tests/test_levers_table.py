"""benchmarks/levers.py: the lever table from finished evaluation folders (written here by hand)."""

from __future__ import annotations

import json

import numpy as np
from benchmark_loader import load_benchmark
from eval_fixtures import write_eval


def test_table_rows_intervals_choice_and_missing_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, 400)
    good = np.where(rng.random(400) < 0.8, truth, (truth + 1) % 8)
    weak = np.where(rng.random(400) < 0.4, truth, (truth + 1) % 8)
    write_eval(tmp_path / "a" / "valid", truth, weak, split="valid")
    write_eval(tmp_path / "a" / "test", truth, weak, answered=weak)
    write_eval(tmp_path / "b" / "valid", truth, good, split="valid")
    write_eval(tmp_path / "b" / "test", truth, good)
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"wall_seconds": 600}))
    spec = {"title": "Levers", "base": "base text", "rows": [
        {"name": "weak", "lever": "baseline", "command": "facephi train A", "run": "a", "valid": "a/valid",
         "test": "a/test"},
        {"name": "good", "lever": "votes", "command": "facephi train B", "run": "b", "valid": "b/valid",
         "test": "b/test"},
        {"name": "later", "lever": "K>1", "command": "x", "run": "c", "valid": "c/valid", "test": "c/test"},
        {"name": "gpu", "lever": "paper preset", "not_run": "needs a GPU"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "levers.md"
    code = load_benchmark("levers").main(["--spec", str(tmp_path / "spec.json"), "--root", str(tmp_path),
                                          "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert "best_valid=good" in printed
    accuracy = float(next(line for line in printed if line.startswith("best_test_accuracy=")).split("=")[1])
    assert abs(accuracy - (good == truth).mean()) < 1e-4
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    weak_cells = [c.strip() for c in rows["weak"].strip("|").split("|")]
    assert weak_cells[-1] == "10 min"
    low, high = (float(v) for v in weak_cells[3].split("[")[1].rstrip("]").split(","))
    assert low < 100 * (weak == truth).mean() < high
    assert weak_cells[5] != "–" and [c.strip() for c in rows["good"].strip("|").split("|")][5] == "–"
    assert "not run: no finished valid / test evaluation" in rows["later"]
    corrected = [c.strip() for c in rows["weak, prior-corrected scoring"].strip("|").split("|")]
    assert corrected[-1] == "same model" and corrected[5] == "–" and "[" in corrected[3]
    assert "not run: needs a GPU" in rows["gpu"]
    assert "`facephi train B`" in text and "at once): met." in text  # 80 % accuracy and macro recall


def test_bad_spec_is_one_line_error(tmp_path, capsys):
    (tmp_path / "spec.json").write_text("{not json")
    assert load_benchmark("levers").main(["--spec", str(tmp_path / "spec.json")]) == 2
    assert "levers: error:" in capsys.readouterr().err
