"""benchmarks/table1_seeds.py: the (b) vs (c) comparison over seeds, from hand-written evaluations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_loader import load_benchmark
from eval_fixtures import write_eval


def encoders_and_data(tmp_path):
    for name in ("aligned", "classify"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "aligned" / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.7,
                                                                             "balanced_accuracy": 0.42}}))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    return ["--data", str(tmp_path / "data"), "--aligned", str(tmp_path / "aligned"), "--classify",
            str(tmp_path / "classify"), "--runs", str(tmp_path / "runs")]


def test_aligned_better_on_every_seed_is_resolved_and_missing_seed_reported(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, 1500)
    for seed in (0, 1):
        good = np.where(rng.random(1500) < 0.75, truth, (truth + 1) % 8)
        weak = np.where(rng.random(1500) < 0.55, truth, (truth + 1) % 8)
        write_eval(tmp_path / "runs" / f"align-seed{seed}" / "eval-test", truth, good)
        write_eval(tmp_path / "runs" / f"classify-seed{seed}" / "eval-test", truth, weak)
    write_eval(tmp_path / "runs" / "classify-seed2" / "eval-test", truth, truth)  # its pair is missing
    out = tmp_path / "table.md"
    args = [*encoders_and_data(tmp_path), "--seeds", "0", "1", "2", "--report-only", "--out", str(out)]
    assert load_benchmark("table1_seeds").main(args) == 0
    printed = capsys.readouterr().out
    diff = float(next(line for line in printed.splitlines() if line.startswith("diff_accuracy=")).split("=")[1])
    assert 0.15 < diff < 0.25
    text = out.read_text()
    assert "Over 2 seed(s) (0, 1)" in text and "Only 2 of 3 seeds finished" in text
    assert "not run (no" in text and "align-seed2" in text
    assert "**accuracy**" in text and "the aligned encoder helps" in text
    assert "on its own (Test): accuracy 70.0 %" in text and "no metrics.json" in text


def test_equal_models_are_not_called_different(tmp_path, capsys):
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 8, 800)
    for seed in (0, 1, 2):
        for objective in ("align", "classify"):
            pred = np.where(rng.random(800) < 0.6, truth, (truth + 3) % 8)
            write_eval(tmp_path / "runs" / f"{objective}-seed{seed}" / "eval-test", truth, pred)
    args = [*encoders_and_data(tmp_path), "--report-only"]
    assert load_benchmark("table1_seeds").main(args) == 0
    text = capsys.readouterr().out
    assert text.count("no difference that the seeds and faces can resolve") == 2


def test_commands_of_one_run_and_checks_before_work(tmp_path, capsys):
    module = load_benchmark("table1_seeds")
    args = encoders_and_data(tmp_path)
    parsed = module.argparse.Namespace(data=tmp_path / "data", aligned=tmp_path / "aligned",
                                       classify=tmp_path / "classify", runs=tmp_path / "runs", seeds=[3, 4],
                                       limit_train=500, precision="bfloat16", threads=2)
    runs = module.plan(parsed)
    assert [(r.objective, r.seed) for r in runs] == [("classify", 3), ("align", 3), ("classify", 4), ("align", 4)]
    steps = module.commands(runs[1], parsed)
    assert [s[1][1:4] for s in steps] == [["train", "--stage", "1"], ["train", "--stage", "2"],
                                           ["eval", "--model", str(runs[1].stage1.parent / "s2" / "final")]]
    assert str(tmp_path / "aligned") in steps[0][1] and "--seed" in steps[1][1] and "bfloat16" in steps[2][1]
    assert steps[2][0] == tmp_path / "runs" / "align-seed3" / "eval-test" / "metrics.json"
    bad = [*args[:3], str(tmp_path / "nowhere"), *args[4:]]
    assert module.main(bad) == 2
    assert "--aligned" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_paired_resampling_keeps_the_pairing():
    from facephi.scoring.metrics import bootstrap_intervals, resampled_rates

    rng = np.random.default_rng(2)
    truth = rng.integers(0, 8, 300)
    pred = np.where(rng.random(300) < 0.5, truth, -1)
    same, also = resampled_rates(truth, [pred, pred.copy()], 8, resamples=200)
    assert np.array_equal(same["accuracy"], also["accuracy"])  # same draws: identical, differences exactly 0
    (alone,) = resampled_rates(truth, [pred], 8, resamples=200)
    assert np.array_equal(alone["macro_f1"], same["macro_f1"])
    low, high = bootstrap_intervals(truth, pred, 8, 200)["accuracy"]
    assert low <= (pred == truth).mean() <= high
    with pytest.raises(ValueError, match="resamples"):
        resampled_rates(truth, [pred], 8, resamples=0)


def test_one_seed_has_no_t_interval_and_says_so(tmp_path, capsys):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 8, 1000)
    write_eval(tmp_path / "runs" / "align-seed0" / "eval-test", truth, truth)
    write_eval(tmp_path / "runs" / "classify-seed0" / "eval-test", truth, (truth + 1) % 8)
    assert load_benchmark("table1_seeds").main([*encoders_and_data(tmp_path), "--seeds", "0", "--report-only"]) == 0
    text = capsys.readouterr().out
    assert "+100.0 [–] [100.0, 100.0]" in text and "one seed: no t-interval" in text
