"""Training speed levers (``FacePhiModel.fast_path``, ``TrainConfig.fast_path``): each gives the loss and
the trainable parameters' gradients of the plain computation, on tiny models of every architecture.

* the shared prefix ([BOS] + system prompt + "Users:") run once per batch and broadcast from its
  key/value cache (stage 2), or once per run (frozen LLM: stage 1, evaluation, scoring);
* the last token of each row (it predicts nothing) is not run; the LM head only at answer positions;
* padding to the batch's longest sequence (``collate_train``), and on CPU rows in groups of similar
  length (``length_groups``); no autograd through frozen parts;
* class scoring as one token-tree pass (``ClassScorer.tree_scores``, sdpa and eager attention);
* fused AdamW, resumable from a checkpoint of the plain loop and back; 2-process DDP, grad
  accumulation, LoRA, bf16 autocast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_facephi_model import build
from train_fixtures import make_dataset, make_model, tiny_config

import facephi.model.class_scoring as class_scoring
import facephi.model.facephi as facephi_module
from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS
from facephi.labels import CLASSES, display_name
from facephi.model.facephi import length_groups
from facephi.train.stages import collate_train, set_train_mode, train_stage

ARCHITECTURES = ("llama", "phi", "gpt2")
PAIRS = ((0, 0, 1), (11, 3, 4), (7, 9, 6), (14, 5, 7))  # (instruction, answer template, class): lengths differ


def batch_of(model, pairs=PAIRS, seed=1):
    items = [{**model.formatter.encode_train(INSTRUCTIONS[i], ANSWER_TEMPLATES[a].format(emotion=display_name(CLASSES[c]))),
              "points": torch.randn(478, 3, generator=torch.Generator().manual_seed(seed + n))}
             for n, (i, a, c) in enumerate(pairs)]
    return collate_train(items)


def loss_and_grads(model, batch, fast: bool):
    model.fast_path = fast
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def assert_same(model, batch, rtol=1e-5, atol=1e-6):
    naive_loss, naive_grads = loss_and_grads(model, batch, fast=False)
    fast_loss, fast_grads = loss_and_grads(model, batch, fast=True)
    torch.testing.assert_close(fast_loss, naive_loss, rtol=rtol, atol=atol)
    assert fast_grads.keys() == naive_grads.keys() and fast_grads
    for name in naive_grads:
        torch.testing.assert_close(fast_grads[name], naive_grads[name], rtol=rtol, atol=atol, msg=name)
    return fast_grads


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_batch_layout_is_split_after_the_shared_prefix(architecture):
    model = build(architecture)
    batch = batch_of(model)
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1 and lengths.max() == batch["input_ids"].shape[1]  # longest, left padded
    ids, real, labels = model.prefix.split(batch["input_ids"], batch["attention_mask"], batch["labels"])
    p = len(model.formatter.shared_prefix)
    assert torch.equal(real.sum(1), lengths - p)
    assert ((ids == model.landmark_id).sum(1) == 1).all()  # each rest starts with <landmark>
    for row in range(len(ids)):  # the rest of each row, exactly, after its pads
        n = int(lengths[row]) - p
        assert torch.equal(ids[row, -n:], batch["input_ids"][row, -n:])
        assert torch.equal(labels[row, -n:], batch["labels"][row, -n:])
        assert not real[row, :-n].any()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_stage1_loss_and_projector_gradients_equal_the_plain_computation(architecture):
    model = build(architecture)
    model.set_trainable(1)
    set_train_mode(model)  # the frozen LLM in eval mode, as in training
    grads = assert_same(model, batch_of(model))
    assert set(grads) == {name for name, _ in model.named_parameters() if name.startswith("projector.")}
    assert all(p.grad is None for p in model.llm.parameters())  # no parameter gradient through the LLM


def test_full_vocabulary_head_models_take_the_fast_path_too():
    model = build("phi")
    model.config.answer_only_head = False  # the loss from the LLM's own logits (e.g. soft-capped ones)
    model.set_trainable(1)
    set_train_mode(model)
    assert_same(model, batch_of(model))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_stage2_loss_and_all_gradients_equal_the_plain_computation(architecture):
    model = build(architecture)
    model.set_trainable(2)
    model.eval()  # no dropout (GPT-2's default 0.1): the two computations then draw nothing at random
    grads = assert_same(model, batch_of(model), atol=1e-5)
    assert len(grads) == len(list(model.projector.parameters())) + len(list(model.llm.parameters()))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_stage2_lora_gradients_equal_the_plain_computation(architecture):
    model = build(architecture)
    model.set_trainable(2, lora=True, lora_config={"lora_dropout": 0.0})
    with torch.no_grad():  # LoRA's B starts at 0: make the adapter act, so its A gets a gradient too
        for name, param in model.llm.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.eval()  # no dropout (see above)
    grads = assert_same(model, batch_of(model), atol=1e-5)
    assert any("lora_A" in name for name in grads) and all("lora_" in n for n in grads if n.startswith("llm."))


def test_length_groups_cover_every_row_and_cut_padding():
    lengths = [5, 30, 6, 31, 5, 29, 7]
    groups = length_groups(lengths, overhead=10)
    assert sorted(sum(groups, [])) == list(range(7))
    assert [sorted(lengths[r] for r in g) for g in groups] == [[5, 5, 6, 7], [29, 30, 31]]
    assert length_groups(lengths, overhead=10_000) == [sorted(range(7), key=lambda r: lengths[r])]
    assert len(length_groups(lengths, overhead=0)) == len(set(lengths))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("trained", ["projector", "lora", "full"])
def test_rows_in_length_groups_give_the_same_loss_and_gradients(monkeypatch, architecture, trained):
    monkeypatch.setattr(facephi_module, "PASS_OVERHEAD_TOKENS", 0)  # one group per length
    model = build(architecture)
    if trained == "lora":  # rank 1: few trainable weights, as LoRA's on a real LLM
        model.set_trainable(2, lora=True, lora_config={"lora_dropout": 0.0, "r": 1})
    else:
        model.set_trainable(1 if trained == "projector" else 2)
    model.eval()
    batch = batch_of(model)
    rest = batch["attention_mask"].sum(1) - len(model.formatter.shared_prefix)
    assert len(set(rest.tolist())) == len(PAIRS)
    calls = []
    monkeypatch.setattr(model, "_run_after_prefix", lambda *a, _f=model._run_after_prefix: calls.append(1) or _f(*a))
    assert_same(model, batch, atol=1e-5)
    assert len(calls) == (1 if trained == "full" else len(PAIRS))  # the full LLM trainable: one group


def test_frozen_prefix_runs_once_per_run_and_follows_weight_changes(monkeypatch):
    model = build("llama")
    model.set_trainable(1)
    set_train_mode(model)
    calls = []
    run_prefix = model.prefix.run
    monkeypatch.setattr(model.prefix, "run", lambda device: calls.append(1) or run_prefix(device))
    optimizer = torch.optim.AdamW(model.projector.parameters(), lr=1e-2)
    for seed in range(3):  # three training steps: the projector changes, the prefix is reused
        model(**batch_of(model, seed=seed)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        model(**batch_of(model))  # evaluation (no_grad) reuses it too
    assert len(calls) == 1
    with torch.no_grad():  # an LLM weight changed in place: the cache is stale and recomputed
        next(model.llm.parameters()).mul_(1.5)
    assert_same(model, batch_of(model))
    assert len(calls) == 2
    with torch.inference_mode():
        model(**batch_of(model))
    assert len(calls) == 3  # inference tensors are never reused where autograd would save them
    model(**batch_of(model)).loss.backward()
    assert len(calls) == 4


def test_a_fused_optimizer_step_on_the_llm_leaves_no_stale_prefix():
    """Fused AdamW does not bump the weights' versions: the cache is dropped while the LLM is trainable."""
    model = build("llama")
    model.set_trainable(1)
    batch = batch_of(model)
    with torch.no_grad():
        model(**batch)  # cached while frozen
    model.llm.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.llm.parameters(), lr=0.1, fused=True)
    model(**batch).loss.backward()
    optimizer.step()
    model.requires_grad_(False)
    with torch.no_grad():
        fast = model(**batch).loss
        model.fast_path = False
        torch.testing.assert_close(fast, model(**batch).loss, rtol=1e-5, atol=1e-6)


def test_no_autograd_through_the_frozen_encoder_and_prefix():
    model = build("llama")
    model.set_trainable(1)
    set_train_mode(model)
    seen = []
    model.encoder.register_forward_hook(lambda module, args, out: seen.append(out.requires_grad))
    loss = model(**batch_of(model)).loss
    assert seen == [False] and loss.requires_grad
    assert all(not k.requires_grad and not v.requires_grad for k, v in model.prefix.state[1])


def test_rows_cut_by_max_length_or_not_left_padded_take_the_plain_path():
    model = build("llama")
    model.set_trainable(1)
    batch = batch_of(model)
    p = len(model.formatter.shared_prefix)
    width = int(batch["attention_mask"].sum(1).min()) - p // 2  # every row loses part of the prefix
    cut = {k: v[:, -width:] if k != "points" else v for k, v in batch.items()}
    assert model.prefix.split(cut["input_ids"], cut["attention_mask"], cut["labels"]) is None
    assert_same(model, cut)
    flipped = {k: v.flip(1) if k != "points" else v for k, v in batch.items()}  # right padding
    assert model.prefix.split(flipped["input_ids"], flipped["attention_mask"]) is None


def test_autocast_bf16_matches_the_plain_computation():
    model = build("llama")
    model.set_trainable(1)
    set_train_mode(model)
    batch = batch_of(model)
    model(**batch)  # a float32 prefix cache first: autocast must not reuse it
    float32_keys = model.prefix.state[1][0][0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same(model, batch, rtol=2e-2, atol=2e-2)
    assert model.prefix.state[0][1:3] == (True, torch.bfloat16)
    assert not torch.equal(model.prefix.state[1][0][0], float32_keys)  # recomputed in bfloat16


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("templates", ["first", "all"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_class_scores_in_one_tree_pass_equal_the_plain_scoring(monkeypatch, architecture, templates, attention):
    model = build(architecture)
    model.llm.set_attn_implementation(attention)
    points = torch.randn(3, 478, 3, generator=torch.Generator().manual_seed(3))
    instructions = [INSTRUCTIONS[i] for i in (1, 0, 7)]
    model.fast_path = False
    plain = model.class_log_likelihoods(points, instructions, templates)
    model.fast_path = True
    monkeypatch.setattr(class_scoring, "SCORE_TOKENS", 1)  # one face per pass: the grouping is covered too
    monkeypatch.setattr(model.scorer, "plain_scores", None)  # the tree pass only
    torch.testing.assert_close(model.class_log_likelihoods(points, instructions, templates), plain,
                               rtol=1e-5, atol=1e-5)


def test_scoring_of_prompts_cut_by_max_length_takes_the_plain_path():
    model = build("llama")
    instructions = [INSTRUCTIONS[i] for i in (1, 0, 7)]
    points = torch.randn(3, 478, 3, generator=torch.Generator().manual_seed(3))
    full = model.class_log_likelihoods(points, instructions)
    model.formatter.max_length = len(model.formatter.encode_prompt(INSTRUCTIONS[1])) - 2  # the longest prompt is cut
    assert model.scorer.tree_scores(model.prefix, points, instructions, [[model.scorer.answer_ids("A b.")] * 8]) is None
    cut = model.class_log_likelihoods(points, instructions)
    model.fast_path = False
    torch.testing.assert_close(cut, model.class_log_likelihoods(points, instructions), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cut, full)


# ------------------------------------------------------------------------------------- training loop

def _train(run_dir, stage: int, fast: bool, **changes):
    model = make_model(seed=0)
    if stage == 2 and changes.get("lora"):
        changes.setdefault("lora_dropout", 0.0)
    config = tiny_config(stage, fast_path=fast, max_steps=4, **changes)
    result = train_stage(model, make_dataset(model), config, run_dir, valid_set=make_dataset(model, n=8, seed=1),
                         progress=False)
    return model, result


def _log(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [row["loss"] for row in metrics["log"]], metrics["valid_loss_start"], metrics["valid_loss_end"]


@pytest.mark.parametrize("stage,changes", [(1, {}), (2, {}), (2, {"lora": True})], ids=["stage1", "stage2", "lora"])
def test_fast_and_plain_training_runs_agree(tmp_path, stage, changes):
    """Grad accumulation 2, warm-up + cosine, clipping, valid loss before and after: the same run."""
    plain, _ = _train(tmp_path / "plain", stage, False, **changes)
    fast, _ = _train(tmp_path / "fast", stage, True, **changes)
    (plain_log, *plain_valid), (fast_log, *fast_valid) = _log(tmp_path / "plain"), _log(tmp_path / "fast")
    assert len(plain_log) == 4
    torch.testing.assert_close(torch.tensor(fast_log), torch.tensor(plain_log), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(fast_valid), torch.tensor(plain_valid), rtol=1e-4, atol=1e-5)
    a, b = plain.state_dict(), fast.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    run = json.loads((tmp_path / "fast" / "run.json").read_text())
    assert run["settings"]["train"]["fast_path"] is True


def test_resume_switches_between_fast_and_plain(tmp_path):
    """A checkpoint of the plain loop (for-each AdamW) resumes on the fast path (fused) and back."""
    def run(run_dir, fast, **kwargs):
        model = make_model(seed=0)
        result = train_stage(model, make_dataset(model), tiny_config(2, lr=1e-3, save_every=2, fast_path=fast),
                             run_dir, progress=False, **kwargs)
        return model, result

    reference, _ = run(tmp_path / "straight", True)
    _, first = run(tmp_path / "mixed", False, stop_after=3)
    _, second = run(tmp_path / "mixed", True, resume=True, stop_after=3)
    resumed, last = run(tmp_path / "mixed", False, resume=True)
    assert (first.global_step, second.global_step, last.global_step) == (3, 6, 8) and last.finished
    ref, new = reference.state_dict(), resumed.state_dict()
    for key in ref:
        torch.testing.assert_close(new[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
    optimizer = json.loads(next((tmp_path / "mixed" / "checkpoints").iterdir()).joinpath("optimizer.json").read_text())
    assert optimizer["param_groups"][0]["fused"] in (None, False)  # the last (plain) segment wrote it


DDP_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
from train_fixtures import make_dataset, make_model, tiny_config
from facephi.train.stages import train_stage
states = {{}}
for fast in (False, True):
    model = make_model(seed=0)
    train_stage(model, make_dataset(model), tiny_config(2, fast_path=fast, max_steps=3, lr=1e-3),
                os.path.join({out!r}, str(fast)), progress=False)
    states[fast] = model.state_dict()
if os.environ["RANK"] == "0":
    diff = max(float((states[True][k] - states[False][k]).abs().max()) for k in states[True])
    logs = [[row["loss"] for row in json.load(open(os.path.join({out!r}, str(fast), "metrics.json")))["log"]]
            for fast in (False, True)]
    json.dump({{"diff": diff, "logs": logs}}, open(os.path.join({out!r}, "result.json"), "w"))
"""


def test_two_process_training_agrees_with_the_plain_loop(tmp_path):
    """accelerate + DDP over 2 CPU processes (gloo), stage 2: the LLM is used twice per forward."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                   check=True, timeout=300, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["diff"] < 1e-5
    torch.testing.assert_close(torch.tensor(result["logs"][1]), torch.tensor(result["logs"][0]), rtol=1e-5, atol=1e-6)
    run = json.loads((tmp_path / "True" / "run.json").read_text())
    assert run["settings"]["schedule"]["num_processes"] == 2
