"""The GPU path on tiny models: the same numbers on CUDA as on the CPU, and both stages, evaluation
and class scoring end to end through the CLI with bf16 mixed precision.

Skipped where torch sees no CUDA device (CI has none): run it on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_facephi_model import build
from test_speed_levers import ARCHITECTURES, batch_of, loss_and_grads
from train_fixtures import write_encoder, write_landmark_set, write_llm

from facephi.data.templates import INSTRUCTIONS
from facephi.train.stages import set_train_mode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _on(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _for_stage(model, stage: int):
    """``model`` set up as training stage ``stage`` runs it; stage 2 in eval mode (no dropout draws)."""
    model.set_trainable(stage)
    if stage == 1:
        set_train_mode(model)  # the frozen LLM in eval mode, as in training
    else:
        model.eval()
    return model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("stage", (1, 2))
def test_loss_and_gradients_on_cuda_equal_the_cpu(architecture, stage):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = _for_stage(build(architecture), stage)
    batch = batch_of(cpu)
    want_loss, want_grads = loss_and_grads(cpu, batch, fast=True)
    gpu = _for_stage(build(architecture).cuda(), stage)
    for fast in (True, False):
        loss, grads = loss_and_grads(gpu, _on(batch, "cuda"), fast=fast)
        torch.testing.assert_close(loss.cpu(), want_loss, rtol=1e-4, atol=1e-5)
        assert grads.keys() == want_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad.cpu(), want_grads[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_answers_and_class_scores_on_cuda_equal_the_cpu(architecture):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu = build(architecture)
    gpu = build(architecture).cuda()
    points = torch.randn(3, 478, 3, generator=torch.Generator().manual_seed(3))
    instructions = [INSTRUCTIONS[i] for i in (0, 5, 11)]
    assert gpu.answer(points, instructions, max_new_tokens=8) == cpu.answer(points, instructions, max_new_tokens=8)
    for templates in ("first", "all"):
        torch.testing.assert_close(gpu.class_log_likelihoods(points, instructions, templates).cpu(),
                                   cpu.class_log_likelihoods(points, instructions, templates), rtol=1e-4, atol=1e-4)
    gpu.set_precision("bfloat16")
    probabilities = gpu.class_probabilities(points, instructions)
    assert probabilities.device.type == "cuda" and torch.allclose(probabilities.sum(1).float().cpu(), torch.ones(3))


def test_both_stages_and_evaluation_run_on_cuda_in_bf16(tmp_path, capsys):
    from facephi.cli import main

    data = write_landmark_set(tmp_path / "data", {"train": 16, "valid": 8, "test": 8})
    encoder, llm = write_encoder(tmp_path / "encoder"), write_llm(tmp_path / "llm")
    common = ["--data", str(data), "--preset", "paper", "--batch-size", "4", "--max-steps", "2", "--limit-valid", "4",
              "--max-length", "96", "--mixed-precision", "bf16", "--save-every", "1", "--no-progress"]
    assert main(["train", "--stage", "1", "--encoder", str(encoder), "--llm", str(llm),
                 "--out", str(tmp_path / "run1"), *common]) == 0
    assert main(["train", "--stage", "2", "--init", str(tmp_path / "run1" / "final"), "--grad-accum", "2",
                 "--out", str(tmp_path / "run2"), *common]) == 0
    for run in ("run1", "run2"):
        settings = json.loads((tmp_path / run / "run.json").read_text())["settings"]
        assert settings["schedule"]["mixed_precision"] == "bf16", run
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert all(torch.isfinite(torch.tensor(row["loss"])) for row in metrics["log"]), run
    # A stopped run resumes on the GPU from its checkpoint (optimizer, scheduler, CUDA RNG).
    assert main(["train", "--stage", "2", "--init", str(tmp_path / "run1" / "final"), "--grad-accum", "2",
                 "--out", str(tmp_path / "run3"), "--stop-after", "1", *common]) == 0
    assert main(["train", "--stage", "2", "--init", str(tmp_path / "run1" / "final"), "--grad-accum", "2",
                 "--out", str(tmp_path / "run3"), "--resume", *common]) == 0
    assert (tmp_path / "run3" / "final" / "config.json").is_file()

    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "run2" / "final"), "--data", str(data), "--device", "cuda",
                 "--precision", "bfloat16", "--mode", "both", "--max-new-tokens", "8",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 8 and {"score", "agreement"} <= set(metrics)
