"""Where a batched answer's time goes, and the per-face draft budget of batched passes (issue 21's
throughput targets: folders ≥ 10 × and video at 5 frames/s in real time).

    python benchmarks/batch_drafts.py --faces 96 --batch-size 16 --draft-min 2 4 6 8 --repeats 2 \\
        --out benchmarks/results/batch_drafts.md

Loads the shipped model (float32), answers ``--faces`` seeded random FER+ Test faces (landmarks, the
paper's first instruction) in batches of ``--batch-size`` with ``answer_and_probabilities`` (what
``facephi predict`` does for a folder or a video), once per ``DRAFT_MIN`` of ``--draft-min`` (drafted
tokens per face and pass after the first; ``model/decoding.py``), the settings interleaved
``--repeats`` times (the machine's speed drifts by several percent between runs). Per setting: faces/s
(median over the repeats), LLM passes per batch, and the token positions the LLM computes per face —
in the first pass (the face's prompt after the shared prefix and the class-scoring tree of template 0,
which is also the first draft) and in the later passes (the answer's drafts) — and whether the
answers equal those of the first setting (they must: the drafts are checked against greedy decoding).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = "Can you identify the emotion displayed by this 3D facial landmark?"


class PositionCounter:
    """Wraps a ``SharedPrefix``'s ``step``: LLM passes and token positions, the first pass of each
    batch apart."""

    def __init__(self, prefix: Any) -> None:
        self.step, self.passes, self.first, self.later, self.fresh = prefix.step, 0, 0, 0, True
        prefix.step = self

    def __call__(self, embeds: Any, *args: Any, **kwargs: Any) -> Any:
        positions = int(embeds.shape[0] * embeds.shape[1])
        if self.fresh:
            self.first += positions
        else:
            self.later += positions
        self.passes, self.fresh = self.passes + 1, False
        return self.step(embeds, *args, **kwargs)


def run(model: Any, points: Any, batch: int, counter: PositionCounter) -> tuple[float, list[str]]:
    """Seconds to answer ``points`` in batches, and the answers."""
    answers: list[str] = []
    start = time.perf_counter()
    for at in range(0, len(points), batch):
        counter.fresh = True
        part = points[at:at + batch]
        answers += model.answer_and_probabilities(part, [INSTRUCTION] * len(part))[0]
    return time.perf_counter() - start, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="FacePhi model folder (default: the shipped one)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ferplus", help="FER+ landmarks")
    parser.add_argument("--faces", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--draft-min", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="markdown results file")
    args = parser.parse_args(argv)

    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import check_writable_dir, write_text

    try:
        if min(args.faces, args.batch_size, args.repeats, args.threads, *args.draft_min) < 1:
            raise FacePhiError("--faces, --batch-size, --repeats, --threads and --draft-min must be positive")
        check_writable_dir(args.out.parent, "--out")
        from facephi.landmarks.store import LandmarkSet
        from facephi.model.checkpoints import FACEPHI, check_model_dir
        from facephi.serve.api import model_path

        check_model_dir(model_path(args.model), "--model", expect=FACEPHI)

        data = LandmarkSet.load(args.data, drop_invalid=True)
    except (FacePhiError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    import facephi.model.decoding as decoding
    from facephi.serve.api import FacePhi

    torch.set_num_threads(args.threads)
    default = decoding.DRAFT_MIN
    model = FacePhi.from_pretrained(args.model, device="cpu", threads=args.threads, flag="--model").predictor.model
    rows = data.select("test", args.faces, "random", 0)
    points = torch.as_tensor(np.asarray(model.encoder.normalizer(data.landmarks[rows], data.sizes[rows]), np.float32))
    counter = PositionCounter(model.answering_prefix())
    run(model, points[:args.batch_size], args.batch_size, counter)  # warm-up: the answering copy, the history
    seconds: dict[int, list[float]] = {d: [] for d in args.draft_min}
    counts: dict[int, tuple[int, int, int]] = {}
    answers: dict[int, list[str]] = {}
    for _ in range(args.repeats):
        for draft_min in args.draft_min:
            decoding.DRAFT_MIN = draft_min
            counter.passes = counter.first = counter.later = 0
            took, answers[draft_min] = run(model, points, args.batch_size, counter)
            seconds[draft_min].append(took)
            counts[draft_min] = (counter.passes, counter.first, counter.later)
    batches = -(-len(points) // args.batch_size)
    reference = answers[args.draft_min[0]]
    lines = ["# Batched answers: draft budget and token positions (issue 21)", "",
             f"`python benchmarks/batch_drafts.py{f' --model {args.model}' if args.model else ''} --faces {args.faces} --batch-size {args.batch_size} --draft-min "
             f"{' '.join(map(str, args.draft_min))} --repeats {args.repeats} --threads {args.threads} --out {args.out}`",
             "", (__doc__ or "").split("\n\n")[2].replace("\n", " ").replace("``", "`"), "",
             f"{len(points)} FER+ Test faces, batches of {args.batch_size}, float32, {args.threads} threads, "
             f"torch {torch.__version__}; the default is DRAFT_MIN = 4.", "",
             "| DRAFT_MIN | faces/s (median) | each repeat | passes per batch | positions per face: first pass | "
             "later passes | all | answers as the first row |", "|---:|---:|---|---:|---:|---:|---:|---|"]
    for draft_min in args.draft_min:
        passes, first, later = counts[draft_min]
        rates = [len(points) / s for s in seconds[draft_min]]
        lines.append(f"| {draft_min} | {statistics.median(rates):.2f} | {', '.join(f'{r:.2f}' for r in rates)} | "
                     f"{passes / batches:.1f} | {first / len(points):.1f} | {later / len(points):.1f} | "
                     f"{(first + later) / len(points):.1f} | "
                     f"{sum(a == b for a, b in zip(answers[draft_min], reference))}/{len(points)} |")
    if default in seconds:  # rule: another budget replaces the default only if faster in every repeat
        faster = [d for d in args.draft_min if d != default
                  and all(mine < theirs for mine, theirs in zip(seconds[d], seconds[default]))]
        lines += ["", f"Faster than the default ({default}) in every repeat: {', '.join(map(str, faster)) or 'none'}."]
    mean = {d: sum(seconds[d]) / len(seconds[d]) for d in args.draft_min}
    shown = default if default in mean else args.draft_min[0]
    per_position = mean[shown] / sum(counts[shown][1:])
    lines += ["", f"Time per computed position (DRAFT_MIN {shown}): {1000 * per_position:.2f} ms; at that rate the "
              f"positions of one face cost {1000 * per_position * sum(counts[shown][1:]) / len(points):.0f} ms."]
    write_text(args.out, "\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
