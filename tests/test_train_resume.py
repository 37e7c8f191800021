"""Checkpoint / resume: an interrupted and resumed run equals an uninterrupted one, bit for bit."""

from __future__ import annotations

import json

import torch

from facephi.train.checkpoint import list_checkpoints
from facephi.train.stages import train_stage
from train_fixtures import make_dataset, make_model, tiny_config


def _train(run_dir, **kwargs):
    model = make_model(seed=0)
    result = train_stage(model, make_dataset(model), tiny_config(2, lr=1e-3, save_every=3, log_every=2), run_dir,
                         progress=False, **kwargs)
    return model, result


def test_resume_equals_uninterrupted_run(tmp_path):
    reference, ref_result = _train(tmp_path / "straight")
    assert ref_result.finished and ref_result.global_step == 8  # 2 epochs x 4 steps of 4 samples

    # Interrupted twice: mid-epoch (step 3) and across the epoch boundary (step 6).
    _, first = _train(tmp_path / "resumed", stop_after=3)
    assert not first.finished and first.global_step == 3
    assert not (tmp_path / "resumed" / "final").exists()
    _, second = _train(tmp_path / "resumed", resume=True, stop_after=3)
    assert second.global_step == 6
    resumed, last = _train(tmp_path / "resumed", resume=True)
    assert last.finished and last.global_step == 8

    ref_state, new_state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == new_state.keys()
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    ref_log = json.loads((tmp_path / "straight" / "metrics.json").read_text())["log"]
    new_log = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["log"]
    assert [r["step"] for r in ref_log] == [2, 3, 4, 6, 8]  # every 2 steps and at each checkpoint
    assert [(r["step"], r["loss"], r["lr"]) for r in ref_log] == [(r["step"], r["loss"], r["lr"]) for r in new_log]
    assert (tmp_path / "resumed" / "final" / "config.json").is_file()


def test_resume_of_a_finished_run_is_a_no_op(tmp_path):
    _train(tmp_path / "run")
    final = tmp_path / "run" / "final" / "config.json"
    stamp = final.stat().st_mtime_ns
    _, again = _train(tmp_path / "run", resume=True)
    assert again.finished and again.global_step == 8
    assert final.stat().st_mtime_ns == stamp


def test_partial_checkpoints_are_ignored(tmp_path):
    _train(tmp_path / "run", stop_after=3)
    root = tmp_path / "run" / "checkpoints"
    (root / ".step-0000004.tmp").mkdir()  # a crash while writing
    (root / "step-0000005").mkdir()       # no trainer_state.json: incomplete
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-0000003"]
    _, result = _train(tmp_path / "run", resume=True)
    assert result.finished


def test_resume_without_the_random_state_is_refused(tmp_path):
    import pytest

    from facephi.utils.errors import FacePhiError

    _train(tmp_path / "run", stop_after=3)
    (list_checkpoints(tmp_path / "run")[-1] / "rng-0.json").unlink()
    with pytest.raises(FacePhiError, match=r"rng-0\.json is missing .*the resume would not be exact"):
        _train(tmp_path / "run", resume=True)


def test_the_optimizer_kernel_is_recorded_and_a_missing_fused_kernel_is_said(tmp_path, monkeypatch, caplog):
    import logging

    _train(tmp_path / "fused", stop_after=1)
    assert json.loads((tmp_path / "fused" / "run.json").read_text())["optimizer_kernel"] == "fused"

    adamw = torch.optim.AdamW

    def no_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return adamw(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    with caplog.at_level(logging.WARNING, logger="facephi.train.stages"):
        _train(tmp_path / "fallback", stop_after=1)
    assert "fused AdamW is not available here (`fused=True` requires" in caplog.text
    kernel = json.loads((tmp_path / "fallback" / "run.json").read_text())["optimizer_kernel"]
    assert kernel.startswith("for-each (fused unavailable: `fused=True` requires")
