"""`facephi reproduce` end to end with tiny models: every Table-1 row, reuse of finished steps."""

from __future__ import annotations

import json
from pathlib import Path

from facephi.cli import main
from facephi.pipelines.reproduce import ROW_TITLES, ReproduceConfig, reproduce
from train_fixtures import MAX_LENGTH, write_landmark_set, write_llm

TINY_ENCODER = {
    "encoder": "pointmlp-elite", "epochs": 1, "batch_size": 8, "limit_train": None, "probe_samples": 16,
    "encoder_options": {"embed_dim": 8, "dim_expansion": [2], "pre_blocks": [1], "pos_blocks": [1],
                        "k_neighbors": [4], "reducers": [4], "feature_dim": 16, "head_hidden_dim": 16},
}
TINY_STAGES = {"batch_size": 4, "grad_accum": 1, "max_steps": 2, "limit_train": 8, "limit_valid": 4,
               "save_every": None, "max_length": MAX_LENGTH, "num_threads": 1}


def tiny_config(tmp_path: Path) -> ReproduceConfig:
    data = write_landmark_set(tmp_path / "data", {"train": 24, "valid": 8, "test": 8})
    return ReproduceConfig(data=str(data), out=str(tmp_path / "run"), llm=str(write_llm(tmp_path / "llm")),
                           threads=1, eval_limit=6, eval_batch_size=3, max_new_tokens=4,
                           encoder_overrides=TINY_ENCODER, stage_overrides=TINY_STAGES, progress=False)


def test_reproduce_writes_every_row_and_reuses_finished_steps(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    rows = reproduce(config)
    assert list(rows) == [k for k in ROW_TITLES if k in rows] or set(rows) == set(ROW_TITLES)
    assert set(rows) == set(ROW_TITLES)
    for name, row in rows.items():
        assert 0.0 <= row["accuracy"] <= 1.0, name
        assert row["n"] == 6 or name == "chance"
    run = Path(config.out)
    for step in ("encoders/align", "encoders/classify", "llm/align/stage2/final", "llm/classify/stage2/final",
                 "eval/zero_shot", "eval/facephi_align", "eval/facephi_classify", "eval/encoder_classify"):
        assert (run / step).is_dir(), step
    assert rows["facephi_align"]["train_seconds"] > rows["encoder_align"]["train_seconds"] > 0
    table = (run / "table1.md").read_text()
    assert "27.7" in table and "(c) FacePhi" in table
    saved = json.loads((run / "table1.json").read_text())
    assert saved["rows"]["majority"]["accuracy"] == rows["majority"]["accuracy"]

    # A second run reuses every finished step: nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.safetensors")}
    stamps.update({p: p.stat().st_mtime_ns for p in run.rglob("metrics.json") if "eval" in p.parts})
    again = reproduce(config)
    assert {k: v["accuracy"] for k, v in again.items()} == {k: v["accuracy"] for k, v in rows.items()}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_reproduce_cli_reports_missing_data(tmp_path: Path, capsys) -> None:
    assert main(["reproduce", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    assert "not found" in capsys.readouterr().err
