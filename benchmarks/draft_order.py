"""Draft order lever of the fast answering path (issue 21): drafts ordered by the answers decoded so
far (``AnswerTrie.record``) against the trained answers' counts alone.

    python benchmarks/draft_order.py --faces 60 --warm 20 --threads 2

Loads the shipped model (float32), answers ``--warm`` seeded random FER+ faces untimed (the history
the drafts learn from), then times ``answer_and_probabilities`` and ``answer`` on the next faces,
one at a time: p50 in ms and mean LLM passes, once with the decoded answers counted and once not.
The answers are the same either way (the drafts are checked against greedy decoding).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def measure(model, points, instruction: str, warm: int) -> tuple[float, float, float, float]:
    import torch

    with torch.inference_mode():
        for i in range(warm):
            model.answer_and_probabilities(points[i:i + 1], [instruction])
        both, answer, both_passes, answer_passes = [], [], [], []
        for i in range(warm, len(points)):
            start = time.perf_counter()
            model.answer_and_probabilities(points[i:i + 1], [instruction])
            both.append(time.perf_counter() - start)
            both_passes.append(model.decoder().passes)
            start = time.perf_counter()
            model.answer(points[i:i + 1], [instruction])
            answer.append(time.perf_counter() - start)
            answer_passes.append(model.decoder().passes)
    return (float(np.median(both)) * 1000, float(np.mean(both_passes)), float(np.median(answer)) * 1000,
            float(np.mean(answer_passes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "ferplus")
    parser.add_argument("--faces", type=int, default=60)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not 0 <= args.warm < args.faces:
        parser.error("need 0 <= --warm < --faces")
    if not (args.data / "landmarks.npy").is_file():
        print(f"draft_order: error: {args.data}: no landmarks.npy (run `facephi extract` first)", file=sys.stderr)
        return 2
    import torch

    from facephi.data.templates import INSTRUCTIONS
    from facephi.model.defaults import SHIPPED_MODEL
    from facephi.model.facephi import FacePhiModel

    torch.set_num_threads(args.threads)
    landmarks = np.load(args.data / "landmarks.npy", mmap_mode="r")
    chosen = np.sort(np.random.default_rng(1).choice(len(landmarks), args.faces, replace=False))
    for counted in (False, True):
        model = FacePhiModel.from_pretrained(SHIPPED_MODEL).eval()
        points = model.encoder.normalize(np.asarray(landmarks[chosen]), np.full((args.faces, 2), 192, np.float32))
        if not counted:
            model.decoder().trie.record = lambda tokens: None  # the trained answers' counts alone
        both, both_passes, answer, answer_passes = measure(model, points, INSTRUCTIONS[0], args.warm)
        name = "decoded answers counted" if counted else "trained answers' counts only"
        print(f"{name}: answer + probabilities p50 {both:.0f} ms ({both_passes:.2f} passes); "
              f"answer p50 {answer:.0f} ms ({answer_passes:.2f} passes)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
