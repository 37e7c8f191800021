"""`facephi reproduce` end to end with tiny models: every Table-1 row, reuse of finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facephi.cli import main
from facephi.landmarks.store import LandmarkSet
from facephi.pipelines.reproduce import ROW_TITLES, Reproduction, ReproduceConfig, reproduce
from facephi.utils.errors import FacePhiError
from train_fixtures import MAX_LENGTH, write_landmark_set, write_llm

TINY_ENCODER = {
    "encoder": "pointmlp-elite", "epochs": 1, "batch_size": 8, "limit_train": None, "probe_samples": 16,
    "encoder_options": {"embed_dim": 8, "dim_expansion": [2], "pre_blocks": [1], "pos_blocks": [1],
                        "k_neighbors": [4], "reducers": [4], "feature_dim": 16, "head_hidden_dim": 16},
}
TINY_STAGES = {"batch_size": 4, "grad_accum": 1, "max_steps": 2, "limit_train": 8, "limit_valid": 4,
               "save_every": None}


def tiny_config(tmp_path: Path) -> ReproduceConfig:
    data = write_landmark_set(tmp_path / "data", {"train": 24, "valid": 8, "test": 8})
    return ReproduceConfig(data=str(data), out=str(tmp_path / "run"), llm=str(write_llm(tmp_path / "llm")),
                           threads=1, eval_limit=6, eval_batch_size=3, max_new_tokens=4, max_length=MAX_LENGTH,
                           encoder_options=TINY_ENCODER, stage_options=TINY_STAGES)


def _mean_correct(path: Path) -> float:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(bool(r["correct"]) for r in records) / len(records)


def test_reproduce_writes_every_row_and_reuses_finished_steps(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    rows = reproduce(config, progress=False)
    assert set(rows) == set(ROW_TITLES)
    run = Path(config.out)
    saved = json.loads((run / "table1.json").read_text())
    assert list(saved["rows"]) == list(ROW_TITLES)  # the table lists the rows in the paper's order

    # Every figure is the one computed from its own evaluation files.
    data = LandmarkSet.load(config.data)
    test = data.select("test", config.eval_limit, "random", config.seed)
    majority = np.bincount(data.labels[data.select("train")], minlength=8).argmax()
    assert rows["majority"]["accuracy"] == float(np.mean(data.labels[test] == majority))
    assert rows["chance"]["accuracy"] == 1 / 8
    for name in ("zero_shot", "facephi_align", "facephi_classify", "encoder_align", "encoder_classify"):
        assert rows[name]["n"] == len(test) == 6, name
        assert rows[name]["accuracy"] == _mean_correct(run / "eval" / name / "predictions.jsonl"), name
    seconds = [json.loads(p.read_text())["train_seconds"] for p in
               (run / "encoders/align/metrics.json", run / "llm/align/stage1/metrics.json",
                run / "llm/align/stage2/metrics.json")]
    assert rows["encoder_align"]["train_seconds"] == seconds[0]
    assert rows["facephi_align"]["train_seconds"] == sum(seconds)
    table = (run / "table1.md").read_text()
    assert f"| {100 * rows['majority']['accuracy']:.1f} |" in table and "(c) FacePhi" in table

    # A second run reuses every finished step: nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    stamps.update({p: p.stat().st_mtime_ns for p in run.rglob("metrics.json") if "eval" in p.parts})
    again = reproduce(config, progress=False)
    assert {k: v["accuracy"] for k, v in again.items()} == {k: v["accuracy"] for k, v in rows.items()}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # Other settings are refused, naming them; --overwrite recomputes only the steps they touch.
    with pytest.raises(FacePhiError, match="seed 0 -> 1"):
        reproduce(config.replace(seed=1), progress=False)
    with pytest.raises(FacePhiError, match="eval_limit 6 -> 4"):
        reproduce(config.replace(eval_limit=4), progress=False)
    changed = reproduce(config.replace(eval_limit=4, overwrite=True), progress=False)
    assert all(row["n"] == 4 for name, row in changed.items() if name != "chance")
    trained = [p for p in stamps if "eval" not in p.parts]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in trained)  # encoders and LLM stages kept
    assert (run / "eval" / "zero_shot" / "metrics.json").stat().st_mtime_ns != stamps[
        run / "eval" / "zero_shot" / "metrics.json"]


def test_reproduce_refuses_other_data_of_the_same_path(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    reproduction = Reproduction(config, progress=False)
    reproduction.prepare()
    reproduction._start("encoders/align")
    data = Path(config.data)
    (data / "samples.csv").write_text((data / "samples.csv").read_text().replace(",valid,", ",train,", 1))
    with pytest.raises(FacePhiError, match="data_fingerprint"):
        Reproduction(config, progress=False).prepare()


def test_reproduce_cli_checks_everything_before_training(tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path)
    base = ["reproduce", "--data", config.data, "--out", config.out, "--llm", config.llm]
    assert main(["reproduce", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "not found" in capsys.readouterr().err
    for flags, message in ((["--eval-batch-size", "0"], "eval_batch_size (--eval-batch-size): must be >= 1"),
                           (["--threads", "-1"], "threads (--threads): must be >= 1"),
                           (["--stage-option", "lr=nan"], "stage_options (--stage-option): lr (--lr): must be a number"),
                           (["--stage-option", "lr=-1"], "stage_options (--stage-option): lr (--lr): must be > 0"),
                           (["--encoder-option", "epoch=2"], "encoder_options (--encoder-option): AlignConfig: "
                                                             "unknown setting(s) epoch"),
                           (["--llm", str(tmp_path / "no-llm")], "no-llm")):
        assert main([*base[:-2], *flags] if flags[0] == "--llm" else [*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
    assert not (Path(config.out) / "encoders").exists()  # nothing was trained


def test_classify_only_encoder_options_reach_only_the_classify_encoder(tmp_path: Path) -> None:
    config = tiny_config(tmp_path).replace(encoder_options={**TINY_ENCODER, "logit_adjust": 1.0,
                                                            "class_weights": "sqrt"})
    assert config.encoder_config("classify").logit_adjust == 1.0
    assert config.encoder_config("classify").class_weights == "sqrt"
    assert config.encoder_config("align").logit_adjust == 0.0
    assert config.encoder_config("align").class_weights == "none"
