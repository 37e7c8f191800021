"""The one training loop (train/loop.py): schedule, parameter groups, checkpoint contents, resume checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from facephi.train.checkpoint import list_checkpoints, training_state_names
from facephi.train.loop import (LocalBackend, LoopSettings, TrainingLoop, build_scheduler, check_resume,
                                parameter_groups)
from facephi.utils.errors import FacePhiError


def _factors(schedule: str, warmup_ratio: float, total: int) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, schedule, warmup_ratio, total)
    factors = []
    for _ in range(total):
        factors.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return factors


def test_schedules_warm_up_linearly_then_follow_their_shape():
    total, warmup = 10, 3  # ceil(0.25 * 10)
    for schedule in ("constant", "cosine", "linear"):
        factors = _factors(schedule, 0.25, total)
        assert factors[:warmup] == [0.0, 1 / 3, 2 / 3]
        after = [(step - warmup) / (total - warmup) for step in range(warmup, total)]
        expected = {"constant": [1.0] * len(after),
                    "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in after],
                    "linear": [(total - step) / (total - warmup) for step in range(warmup, total)]}[schedule]
        assert factors[warmup:] == pytest.approx(expected, abs=1e-12), schedule
    with pytest.raises(ValueError, match="schedule must be one of"):
        _factors("step", 0.0, 4)


def test_weight_decay_only_on_matrices_and_one_group_without_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    params = list(model.parameters())
    groups = parameter_groups(params, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 3] and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert groups[0]["params"][0] is model[0].weight
    assert len(parameter_groups(params, 0.0)) == 1


class _Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 12) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 3, generator=generator), torch.randint(0, 2, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])


def _loop(model: torch.nn.Module) -> TrainingLoop:
    loop = TrainingLoop(LocalBackend(), 12, LoopSettings(epochs=2, batch_size=4, lr=0.1, weight_decay=0.01,
                                                         lr_schedule="cosine", warmup_ratio=0.2, seed=0))
    loop.setup(model)
    return loop


def test_checkpoints_hold_buffers_of_training_modules_and_resume_exactly(tmp_path):
    straight = _model()
    loop = _loop(straight)
    assert loop.total_steps == 6 and "1.running_mean" in training_state_names(straight)
    losses = [float(v) for v in loop.steps(_Points(), _loss)]

    resumed = _model()
    first = _loop(resumed)
    halves = [float(v) for v in first.steps(_Points(), _loss, epoch_end=True)]
    assert len(halves) == 3 and first.epoch == 0
    first.save_checkpoint(tmp_path, {"note": "half"})
    again = _model()
    second = _loop(again)
    state = second.resume(list_checkpoints(tmp_path)[-1])
    assert state["note"] == "half" and (second.epoch, second.step_in_epoch, second.global_step) == (0, 3, 3)
    halves += [float(v) for v in second.steps(_Points(), _loss)]
    assert halves == losses
    for a, b in zip(straight.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # BatchNorm statistics included


def test_check_resume_compares_the_saved_settings(tmp_path):
    (tmp_path / "checkpoints" / "step-0000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000001" / "trainer_state.json").write_text("{}")
    (tmp_path / "run.json").write_text(json.dumps({"settings": {"a": {"lr": 1, "epochs": 2}, "data": "x"}}))
    with pytest.raises(FacePhiError, match="already holds a training run; pass --resume"):
        check_resume(tmp_path, {"a": {"lr": 1, "epochs": 2}}, frozenset(), resume=False)
    check_resume(tmp_path, {"a": {"lr": 1, "epochs": 3}, "data": "x"}, frozenset({"epochs"}), resume=True)
    with pytest.raises(FacePhiError, match=r"other settings \(lr, data\)"):
        check_resume(tmp_path, {"a": {"lr": 2, "epochs": 2}, "data": "y"}, frozenset(), resume=True)
