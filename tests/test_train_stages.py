"""Two-stage LLM training: what each stage trains, the run directory, presets, data order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facephi.train.checkpoint import EpochBatchSampler
from facephi.train.config import TrainConfig
from facephi.landmarks.store import balanced_subset
from facephi.train.stages import collate_train, train_stage
from facephi.utils.errors import FacePhiError
from train_fixtures import make_dataset, make_model, tiny_config, write_encoder, write_landmark_set, write_llm


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_trains_only_the_projector(tmp_path):
    model = make_model()
    llm, encoder, projector = _state(model.llm), _state(model.encoder), _state(model.projector)
    result = train_stage(model, make_dataset(model), tiny_config(1, max_steps=3), tmp_path / "run",
                         valid_set=make_dataset(model, n=8, seed=1), progress=False)
    assert result.finished and result.global_step == 3
    assert _same(llm, _state(model.llm))
    assert _same(encoder, _state(model.encoder))  # BatchNorm statistics included
    assert not _same(projector, _state(model.projector))

    run = tmp_path / "run"
    for name in ("run.json", "metrics.json", "final"):
        assert (run / name).exists(), name
    assert not (run / "config.json").exists()  # config.json always means a model's config
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["settings"]["train"]["stage"] == 1 and recorded["settings"]["schedule"]["total_steps"] == 3
    assert recorded["seed"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["step"] for row in metrics["log"]] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in metrics["log"])
    assert np.isfinite(metrics["valid_loss_start"]) and np.isfinite(metrics["valid_loss_end"])
    assert metrics["samples_seen"] == 3 * 4 and metrics["samples_per_second"] > 0
    assert len(list((run / "checkpoints").iterdir())) == 1  # keep_checkpoints=1


def test_stage2_trains_the_llm(tmp_path):
    model = make_model()
    llm = _state(model.llm)
    train_stage(model, make_dataset(model), tiny_config(2, max_steps=2, lr=1e-3), tmp_path / "run",
                progress=False)
    changed = [k for k, v in _state(model.llm).items() if not torch.equal(v, llm[k])]
    assert changed and any("layers" in k for k in changed)


def test_existing_run_needs_resume(tmp_path):
    model = make_model()
    data = make_dataset(model)
    train_stage(model, data, tiny_config(1, max_steps=1), tmp_path / "run", progress=False)
    with pytest.raises(FacePhiError, match="already holds a training run"):
        train_stage(model, data, tiny_config(1, max_steps=1), tmp_path / "run", progress=False)
    with pytest.raises(FacePhiError, match="cannot resume.*lr"):
        train_stage(model, data, tiny_config(1, max_steps=1, lr=0.5), tmp_path / "run", resume=True,
                    progress=False)


def test_sampler_order_is_independent_of_processes_and_resumable():
    single = EpochBatchSampler(40, batch_size=8, grad_accum=2, seed=3)
    single.set_position(epoch=1, step=0)
    full = list(single)
    assert len(full) == 10 and all(len(b) == 4 for b in full)
    assert sorted(sum(full, [])) == list(range(40))  # a permutation, nothing repeated
    single.set_position(epoch=1, step=2)
    assert list(single) == full[4:]  # resuming skips exactly the consumed micro-batches
    shards = [EpochBatchSampler(40, 8, 2, 3, num_processes=2, process_index=r) for r in (0, 1)]
    for shard in shards:
        shard.set_position(1, 0)
    merged = [a + b for a, b in zip(*(list(s) for s in shards))]
    assert merged == full
    other_epoch = EpochBatchSampler(40, 8, 2, 3)
    assert list(other_epoch) != full
    with pytest.raises(FacePhiError, match="not divisible"):
        EpochBatchSampler(40, batch_size=6, grad_accum=4)


def test_balanced_subset_keeps_rare_classes():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 3)
    picked = balanced_subset(labels, 21, seed=0)
    counts = np.bincount(labels[picked], minlength=3)
    assert counts.tolist() == [9, 9, 3] and len(set(picked.tolist())) == 21
    assert np.array_equal(picked, balanced_subset(labels, 21, seed=0))
    assert len(balanced_subset(labels, None, seed=0)) == len(labels)


def test_collate_drops_shared_left_padding():
    items = [{"input_ids": torch.tensor([0, 0, 5, 6]), "attention_mask": torch.tensor([0, 0, 1, 1]),
              "labels": torch.tensor([-100, -100, -100, 6]), "points": torch.zeros(2, 3)},
             {"input_ids": torch.tensor([0, 4, 5, 6]), "attention_mask": torch.tensor([0, 1, 1, 1]),
              "labels": torch.tensor([-100, -100, -100, 6]), "points": torch.zeros(2, 3)}]
    batch = collate_train(items)
    assert batch["input_ids"].tolist() == [[0, 5, 6], [4, 5, 6]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]


def test_presets_and_overrides():
    paper1, paper2 = TrainConfig.for_preset("paper", 1), TrainConfig.for_preset("paper", 2)
    assert (paper1.batch_size, paper1.lr, paper1.epochs) == (48, 2.5e-3, 3)
    assert (paper2.batch_size, paper2.lr) == (32, 2.5e-5)
    cpu = TrainConfig.for_preset("cpu", 2)
    assert cpu.limit_train == 4000 and cpu.epochs == 1 and cpu.lr == 2.5e-5 and cpu.threads == 2
    assert cpu.replace(lr=1e-4).lr == 1e-4 and cpu.replace(lr=1e-4).epochs == 1
    assert TrainConfig.from_dict(cpu.to_dict()) == cpu
    with pytest.raises(FacePhiError, match="unknown stage preset 'gpu'"):
        TrainConfig.for_preset("gpu", 1)
    with pytest.raises(FacePhiError, match="LoRA"):
        TrainConfig(stage=1, lora=True)
    with pytest.raises(FacePhiError, match="not divisible"):
        TrainConfig(batch_size=10, grad_accum=3)


def test_cli_runs_both_stages_and_reports_bad_paths(tmp_path, capsys):
    from facephi.cli import main
    from facephi.model.facephi import FacePhiModel

    data = write_landmark_set(tmp_path / "data", {"train": 16, "valid": 8, "test": 8})
    encoder, llm = write_encoder(tmp_path / "encoder"), write_llm(tmp_path / "llm")
    common = ["--data", str(data), "--batch-size", "4", "--max-steps", "2", "--threads", "1", "--limit-valid", "4",
              "--max-length", "96", "--no-progress"]
    assert main(["train", "--stage", "1", "--encoder", str(encoder), "--llm", str(llm),
                 "--out", str(tmp_path / "run1"), *common]) == 0
    config = json.loads((tmp_path / "run1" / "run.json").read_text())["settings"]
    assert config["sources"]["train_class_counts"] == [2] * 8 and config["data"]["valid_samples"] == 4
    assert config["train"]["batch_size"] == 4 and config["train"]["limit_train"] == 4000  # cpu preset kept

    # Bad inputs: one-line errors, exit status 2, no traceback.
    bad = {
        "--init": ["--stage", "2", "--init", str(tmp_path / "run1"), "--out", str(tmp_path / "x")],
        "not found": ["--stage", "1", "--encoder", str(tmp_path / "nope"), "--out", str(tmp_path / "y")],
        "already holds": ["--stage", "1", "--encoder", str(encoder), "--out", str(tmp_path / "run1")],
        "stage 2 starts from": ["--stage", "2", "--encoder", str(encoder), "--out", str(tmp_path / "z")],
    }
    for expected, argv in bad.items():
        capsys.readouterr()
        assert main(["train", *argv, *common]) == 2, expected
        assert expected in capsys.readouterr().err

    assert main(["train", "--stage", "2", "--init", str(tmp_path / "run1" / "final"),
                 "--out", str(tmp_path / "run2"), "--lr", "1e-3", *common]) == 0
    final = tmp_path / "run2" / "final"
    assert json.loads((final / "config.json").read_text())["llm_weights"] == "full" and (final / "llm").is_dir()
    assert FacePhiModel.from_pretrained(final).config.llm_weights == "full"


def test_stage2_lora_trains_only_the_adapter_and_resumes(tmp_path):
    model = make_model()
    base = _state(model.llm)
    config = tiny_config(2, lora=True, lora_r=4, max_steps=2, lr=1e-3)
    first = train_stage(model, make_dataset(model), config, tmp_path / "run", stop_after=1, progress=False)
    assert not first.finished
    model = make_model()
    result = train_stage(model, make_dataset(model), config, tmp_path / "run", resume=True, progress=False)
    assert result.finished and model.config.llm_weights == "lora"
    after = _state(model.llm)
    lora = [k for k in after if "lora_" in k]
    frozen = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert lora and frozen.keys() == base.keys() and _same(frozen, base)  # the base LLM is untouched
    assert any(bool(after[k].any()) for k in lora if "lora_B" in k)  # lora_B starts at zero: it was trained
    assert (tmp_path / "run" / "final" / "adapter").is_dir()


def test_run_both_stages_chains_and_continues_after_a_stop(tmp_path):
    from facephi.train.runner import run_both_stages

    data = write_landmark_set(tmp_path / "data", {"train": 16, "valid": 8, "test": 8})
    encoder, llm = write_encoder(tmp_path / "encoder"), write_llm(tmp_path / "llm")

    def configs(stage: int) -> TrainConfig:
        return tiny_config(stage, max_steps=1, limit_train=4, limit_valid=4)

    class Stop(Exception):
        pass

    def stop_after_stage1(run) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_both_stages(configs, data, tmp_path / "run", encoder=encoder, llm=str(llm), progress=False,
                        on_stage_done=stop_after_stage1)
    assert (tmp_path / "run" / "stage1" / "final").is_dir() and not (tmp_path / "run" / "stage2").exists()

    seen = []
    runs = run_both_stages(configs, data, tmp_path / "run", encoder=encoder, llm=str(llm), progress=False,
                           on_stage_done=seen.append)
    assert [r.stage for r in seen] == [1, 2] and runs == seen
    assert runs[0].seconds is None and runs[1].seconds > 0  # stage 1 reused, stage 2 trained
    stage2 = json.loads((tmp_path / "run" / "stage2" / "run.json").read_text())["settings"]
    assert stage2["sources"]["init"] == str(runs[0].model_dir.resolve())
    assert (runs[1].model_dir / "config.json").is_file()
