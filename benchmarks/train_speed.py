"""Training and inference speed of FacePhi with SmolLM2: the plain loop against the fast path.

    python benchmarks/train_speed.py [--data data/ferplus] [--encoder runs/ship/encoder] \
        [--threads 2] [--steps 8] [--ablations] [--out benchmarks/results/train_speed.md]

One run measures, on the same batches and from the same starting weights:

* stage 1 (projector; frozen LLM) and stage 2 (full fine-tuning) optimizer steps of the real
  training loop (``train.loop.TrainingLoop.train_step``: accelerate, AdamW, schedule, clipping) with
  ``TrainConfig(fast_path=False)`` (the plain loop) and ``fast_path=True``, one process each, in the
  order plain, fast, fast, plain (a slow drift of a shared machine evens out); ``--warmup`` steps
  are not timed. The losses of both are compared step by step;
* generation: ``FacePhiModel.generate`` of exactly 32 new tokens per face (greedy, the ``answer``
  path with ``min_new_tokens=32``), and class scoring: ``class_probabilities`` with the fast path
  off and on (their probabilities are compared), taking turns batch by batch; the first batch is
  not timed;
* with ``--ablations``: the fast path without one lever (stage 1: rows in one group instead of
  length groups; stage 2: the default for-each AdamW instead of the fused one).

Memory: the peak RSS of each part's timed steps (``VmHWM`` reset through ``/proc/self/clear_refs``
after loading and warm-up). CPU share: the CPU time a part got over threads x wall time, to show
when other work on the machine took the cores. Prints ``stage1_speedup=``,
``stage2_speedup=`` and ``scoring_speedup=`` (seconds per face of a 32-token answer over seconds per
face of fast scoring) and writes the markdown report to ``--out``. Without ``--encoder`` the encoder is
a randomly initialised PointMLP-elite with the CPU preset's options (its cost is what matters
here); without ``--data`` the faces are random points in [-1, 1] (the token lengths come from the
real templates either way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("stage1-plain", "stage1-fast", "stage2-fast", "stage2-plain", "inference")
"""One process each, in this order (plain / fast / fast / plain: a slow drift of a shared machine
evens out between the modes)."""
ABLATIONS = ("stage1-fast-one-group", "stage2-fast-foreach-adamw")
NEW_TOKENS = 32


# ------------------------------------------------------------------------------------- memory

def _status(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


class PeakMemory:
    """RSS at the start and the peak RSS since (``VmHWM``, reset at the start where Linux allows)."""

    def __enter__(self) -> "PeakMemory":
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        self.before = _status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.peak = _status("VmHWM")
        self.extra = self.peak - self.before


# ------------------------------------------------------------------------------------- models and data

def build_model(args):
    import dataclasses

    import torch

    from facephi.landmarks.normalize import Normalizer
    from facephi.model.encoder import LandmarkEncoder, LandmarkEncoderConfig
    from facephi.model.facephi import FacePhiConfig, FacePhiModel
    from facephi.model.pointmlp import PointMLPConfig
    from facephi.model.projector import ProjectorConfig

    torch.manual_seed(0)
    if args.encoder:
        encoder = LandmarkEncoder.from_pretrained(args.encoder)
    else:
        backbone = PointMLPConfig.preset("pointmlp-elite", k_neighbors=[8, 8, 8, 8])
        encoder = LandmarkEncoder(LandmarkEncoderConfig(backbone=dataclasses.asdict(backbone), objective="classify",
                                                        normalizer=Normalizer(align=False).to_dict())).eval()
    config = FacePhiConfig(projector=ProjectorConfig(input_dim=encoder.feature_dim),
                           **({"llm": args.llm} if args.llm else {}))
    torch.manual_seed(0)
    return FacePhiModel.from_encoder(encoder, config)


def faces(args, model, n: int, split: str):
    """``n`` instruction items (points, label, index, instruction, answer, training tokens)."""
    import numpy as np
    import torch

    from facephi.data.instruction import InstructionDataset

    if args.data:
        from facephi.data.dataset import LandmarkDataset
        from facephi.landmarks.store import LandmarkSet

        landmarks = LandmarkSet.load(args.data)
        base = LandmarkDataset(landmarks, landmarks.select(split, n, "random", seed=0), model.encoder.normalizer)
    else:
        rng = np.random.default_rng(0 if split == "train" else 1)
        points = torch.as_tensor(rng.uniform(-1, 1, (n, 478, 3)).astype(np.float32))
        base = [{"points": points[i], "label": i % 8, "index": i} for i in range(n)]
    data = InstructionDataset(base, model.formatter, seed=0)
    return [data[i] for i in range(len(data))]


# ------------------------------------------------------------------------------------- parts

def run_stage(args, stage: int, fast: bool, without: str = "") -> dict:
    """Optimizer steps of ``stage`` in this process (one mode): speed, losses, memory, CPU share.
    ``without``: the ablations' lever off ("one-group": rows in one group; "foreach-adamw")."""
    import torch

    import facephi.model.facephi as facephi_module
    import facephi.train.loop as loop
    from facephi.train.config import TrainConfig
    from facephi.train.stages import _StageRun, collate_train, set_train_mode

    if without == "one-group":
        facephi_module.PASS_OVERHEAD_TOKENS = 10 ** 9
    if without == "foreach-adamw":
        loop.build_optimizer = lambda params, settings: (torch.optim.AdamW(
            loop.parameter_groups(params, settings.weight_decay), lr=settings.lr), "for-each")
    model = build_model(args)
    batch = args.stage1_batch if stage == 1 else args.stage2_batch
    steps = args.warmup + args.steps
    items = faces(args, model, batch * steps, "train")
    batches = [collate_train(items[i * batch:(i + 1) * batch]) for i in range(steps)]
    config = TrainConfig.for_preset("cpu", stage, batch_size=batch, grad_accum=1, max_steps=steps, save_every=None,
                                    limit_valid=None, threads=args.threads, fast_path=fast)
    with tempfile.TemporaryDirectory() as tmp:
        run = _StageRun(model, items, config, Path(tmp) / "run", None, {}, False, collate_train)
        set_train_mode(run.model)
        seconds, losses = [], []
        for step, micro_batch in enumerate(batches):
            if step == args.warmup:
                usage, memory = Usage(), PeakMemory().__enter__()
            tic = time.perf_counter()
            losses.append(float(run.loop.train_step(iter([micro_batch]), run.loss)))
            seconds.append(time.perf_counter() - tic)
        memory.__exit__()
    measured = sum(seconds[args.warmup:])
    return {"samples_per_second": args.steps * batch / measured, "seconds_per_step": measured / args.steps,
            "batch": batch, "steps": args.steps, "losses": losses, "peak_rss_mib": memory.peak,
            "cpu_share": usage.share(args.threads), "widths": [int(b["input_ids"].shape[1]) for b in batches]}


class Usage:
    """CPU time this process got since creation, as a share of ``threads`` cores over the wall time
    (about 1.0 alone on the machine; well below 1 when other work took the cores)."""

    def __init__(self) -> None:
        self.start, self.usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)

    def share(self, threads: int) -> float:
        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (now.ru_utime - self.usage.ru_utime) + (now.ru_stime - self.usage.ru_stime)
        return cpu / (threads * (time.perf_counter() - self.start))


def run_inference(args) -> dict:
    import torch

    model = build_model(args).eval().requires_grad_(False)  # as FacePhiModel.from_pretrained gives it
    n, size = args.eval_faces, args.eval_batch
    items = faces(args, model, n + size, "test")  # the first batch warms up
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    parts = ("generate", "score-plain", "score-fast")
    result = {part: {"seconds": 0.0, "outputs": []} for part in parts}
    for k, chunk in enumerate(chunks):
        if k == 1:  # the first batch warms up
            usage, memory = Usage(), PeakMemory().__enter__()
        points = torch.stack([torch.as_tensor(item["points"]) for item in chunk])
        instructions = [item["instruction"] for item in chunk]
        for part in (parts if k % 2 == 0 else parts[::-1]):  # taking turns, the order alternating
            model.fast_path = part != "score-plain"
            tic = time.perf_counter()
            if part == "generate":
                batch = model.formatter.pad_prompts([model.formatter.encode_prompt(t) for t in instructions])
                answers = model.generate(batch["input_ids"], batch["attention_mask"], points,
                                         max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
                output = [[len(model.tokenizer(a, add_special_tokens=False)["input_ids"])] for a in answers]
            else:
                output = model.class_probabilities(points, instructions).tolist()
            elapsed = time.perf_counter() - tic
            if k:
                result[part]["seconds"] += elapsed
                result[part]["outputs"] += output
    memory.__exit__()
    for entry in result.values():
        entry.update(seconds_per_face=entry["seconds"] / n, faces_per_second=n / entry["seconds"], batch=size, faces=n)
    result.update(peak_rss_mib=memory.peak, cpu_share=usage.share(args.threads))
    return result


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.part == "inference":
        result = run_inference(args)
    else:  # stage1-plain, stage2-fast, stage1-fast-one-group, ...
        stage, mode, *without = args.part.split("-", 2)
        result = run_stage(args, int(stage[-1]), mode == "fast", "".join(without))
    Path(args.result).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------- report

def report(args, results: dict, total_seconds: float) -> tuple[str, dict]:
    import numpy as np
    import torch

    speed = {s: results[f"stage{s}-fast"]["samples_per_second"] / results[f"stage{s}-plain"]["samples_per_second"]
             for s in (1, 2)}
    inference = results["inference"]
    gen = inference["generate"]["seconds_per_face"]
    score_speedup = gen / inference["score-fast"]["seconds_per_face"]
    plain_score_speedup = gen / inference["score-plain"]["seconds_per_face"]
    loss_diff = {s: float(np.max(np.abs(np.subtract(results[f"stage{s}-fast"]["losses"],
                                                        results[f"stage{s}-plain"]["losses"])))) for s in (1, 2)}
    prob_diff = float(np.max(np.abs(np.subtract(inference["score-fast"]["outputs"], inference["score-plain"]["outputs"]))))
    new_tokens = np.mean([row[0] for row in inference["generate"]["outputs"]])
    lines = [
        "# Training and inference speed: plain loop vs fast path (`TrainConfig.fast_path`)", "",
        f"Command: `python benchmarks/train_speed.py {' '.join(sys.argv[1:])}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads = {args.threads}; "
        f"torch {torch.__version__}. LLM: {args.llm or 'embedded SmolLM2-135M-Instruct'} (float32); encoder: "
        f"{args.encoder or 'random PointMLP-elite (CPU preset options)'}; faces: {args.data or 'random points'}. "
        f"Training: one process per stage and mode, the same batches and starting weights, {args.warmup} warm-up "
        f"step(s) not timed. Inference: one process, generation and both scorings taking turns batch by batch, "
        f"the first batch not timed. CPU share: the CPU time a part got over (threads x wall time); well "
        f"below 1.0 means other work took the cores. Total run time {total_seconds / 60:.1f} min.", "",
        "| part | plain | fast | speed-up | peak RSS plain / fast | CPU share plain / fast |",
        "|---|---:|---:|---:|---:|---:|"]
    for label, stage in (("stage 1 (projector), samples/s", 1), ("stage 2 (full LLM), samples/s", 2)):
        plain, fast = results[f"stage{stage}-plain"], results[f"stage{stage}-fast"]
        lines.append(f"| {label} (batch {plain['batch']}, {plain['steps']} steps) | {plain['samples_per_second']:.2f} | "
                     f"{fast['samples_per_second']:.2f} | **{speed[stage]:.2f}×** | "
                     f"{plain['peak_rss_mib']:.0f} / {fast['peak_rss_mib']:.0f} MiB | "
                     f"{plain['cpu_share']:.2f} / {fast['cpu_share']:.2f} |")
    sp, sf, g = inference["score-plain"], inference["score-fast"], inference["generate"]
    lines += [
        f"| class scoring (`class_probabilities`, batch {sp['batch']}), faces/s | {sp['faces_per_second']:.2f} | "
        f"{sf['faces_per_second']:.2f} | **{sf['faces_per_second'] / sp['faces_per_second']:.2f}×** | "
        f"{inference['peak_rss_mib']:.0f} MiB (all inference) | {inference['cpu_share']:.2f} |",
        f"| generation ({NEW_TOKENS} new tokens, batch {g['batch']}), faces/s | {g['faces_per_second']:.2f} | | | | |", "",
        f"Scoring vs generating a {NEW_TOKENS}-token answer, per face: **{score_speedup:.2f}×** faster with the fast "
        f"path ({plain_score_speedup:.2f}× without it); {gen:.3f} s vs {sf['seconds_per_face']:.3f} s per face "
        f"({g['faces']} faces; answers re-tokenised: {new_tokens:.1f} tokens on average).", "",
        "Same results: largest |loss difference| per step between the plain and the fast loop: "
        f"stage 1 {loss_diff[1]:.2e}, stage 2 {loss_diff[2]:.2e} (plain losses "
        f"{results['stage1-plain']['losses'][0]:.4f} → {results['stage1-plain']['losses'][-1]:.4f} and "
        f"{results['stage2-plain']['losses'][0]:.4f} → {results['stage2-plain']['losses'][-1]:.4f}); largest "
        f"|class probability difference| between plain and fast scoring: {prob_diff:.2e}.", "",
        f"Batch widths (tokens) of stage 1: {results['stage1-plain']['widths']}.", "",
        *ablation_lines(results),
        "Targets of the issue: stage 1 ≥ 3× (reached: "
        + ("yes" if speed[1] >= 3 else f"no, {speed[1]:.2f}×, {3 / speed[1]:.2f}× short")
        + "), scoring ≥ 10× generation (reached: "
        + ("yes" if score_speedup >= 10 else f"no, {score_speedup:.2f}×, {10 / score_speedup:.1f}× short") + ").", ""]
    summary = {"stage1_speedup": speed[1], "stage2_speedup": speed[2], "scoring_speedup": score_speedup}
    return "\n".join(lines), summary


def ablation_lines(results: dict) -> list[str]:
    lines = []
    for part, lever in (("stage1-fast-one-group", "length groups (vs all rows in one group)"),
                        ("stage2-fast-foreach-adamw", "fused AdamW (vs the default for-each kernel)")):
        if part in results:
            full, without = results[part[:11]]["samples_per_second"], results[part]["samples_per_second"]
            lines.append(f"- {part[:6]}, {lever}: {full:.2f} vs {without:.2f} samples/s, **{full / without:.2f}×** "
                         f"(CPU share {results[part]['cpu_share']:.2f})")
    return ["Ablations (`--ablations`: the fast path without one lever, one process each):", "", *lines, ""] if lines else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="extracted landmark set (default: random faces)")
    parser.add_argument("--encoder", default=None, help="landmark encoder checkpoint (default: random PointMLP-elite)")
    parser.add_argument("--llm", default=None, help="LLM name or path (default: embedded SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per stage and mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--stage1-batch", type=int, default=48, help="stage 1 batch (the presets' 48)")
    parser.add_argument("--stage2-batch", type=int, default=32, help="stage 2 batch (the presets' 32)")
    parser.add_argument("--eval-faces", type=int, default=64, help="timed faces of generation and scoring")
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--ablations", action="store_true", help="also time the fast path without each lever")
    parser.add_argument("--out", default="benchmarks/results/train_speed.md")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        child(args)
        return 0

    start, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in PARTS + (ABLATIONS if args.ablations else ()):
            out = Path(tmp) / f"{part}.json"
            command = [sys.executable, __file__, *sys.argv[1:], "--part", part, "--result", str(out)]
            tic = time.perf_counter()
            subprocess.run(command, check=True)
            results[part] = json.loads(out.read_text())
            print(f"{part}: {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
    text, summary = report(args, results, time.perf_counter() - start)
    from facephi.utils.io import write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text)
    print(text)
    for key, value in summary.items():
        print(f"{key}={value:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
