"""Reference for the encoder benchmark: an MLP on the flattened normalised landmarks (FER+).

    python benchmarks/flat_mlp.py --data data/ferplus --out benchmarks/results/flat_mlp.md

Not a facephi model: a 2-hidden-layer MLP (BatchNorm, ReLU, dropout) on the 478 × 3 aligned,
normalised landmarks of `facephi extract`, trained with AdamW on the whole train split, once on
the raw coordinates and once with every coordinate standardised by its training mean / std. It
measures how far a landmark classifier gets on this data when it sees which landmark is which,
and how much the per-landmark standardisation (the idea behind `PointMLPConfig.standardize_input`)
is worth. The epoch is chosen on Valid accuracy; Test is reported at that epoch.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path



def train_mlp(x: dict, y: dict, epochs: int, hidden: int, seed: int) -> dict:
    """Train on ``x['train']``; return the Valid-best epoch's metrics and the per-epoch history."""
    import torch
    from torch import nn

    from facephi.scoring.metrics import compute_metrics

    torch.manual_seed(seed)
    tensors = {split: torch.as_tensor(values, dtype=torch.float32) for split, values in x.items()}
    labels = torch.as_tensor(y["train"], dtype=torch.long)
    net = nn.Sequential(
        nn.Dropout(0.1), nn.Linear(tensors["train"].shape[1], hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(hidden, 8),
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    history, best, started = [], None, time.perf_counter()
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), 128):
            batch = order[start:start + 128]
            loss = nn.functional.cross_entropy(net(tensors["train"][batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            scores = {split: compute_metrics(y[split], net(tensors[split]).argmax(1).numpy())
                      for split in ("valid", "test")}
        history.append({"epoch": epoch, **scores})
        if best is None or scores["valid"].accuracy > best["valid"].accuracy:
            best = history[-1]
    return {"best": best, "history": history, "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="extracted landmark set (facephi extract)")
    parser.add_argument("--out", required=True, help="markdown results file")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from facephi.landmarks.normalize import Normalizer
    from facephi.landmarks.store import LandmarkSet
    from facephi.utils.io import write_text

    torch.set_num_threads(args.threads)
    landmark_set = LandmarkSet.load(args.data)
    indices = {split: landmark_set.select(split) for split in ("train", "valid", "test")}  # labelled, whole
    train = indices["train"]
    normalizer = Normalizer(align=True).fit(landmark_set.landmarks[train], landmark_set.sizes[train])
    flat = {split: normalizer(landmark_set.landmarks[idx], landmark_set.sizes[idx]).reshape(len(idx), -1)
            for split, idx in indices.items()}
    labels = {split: landmark_set.labels[idx] for split, idx in indices.items()}
    mean, std = flat["train"].mean(0), flat["train"].std(0) + 1e-6
    inputs = {"raw coordinates": flat,
              "standardised per coordinate": {split: (v - mean) / std for split, v in flat.items()}}

    lines = [
        "# Reference: MLP on flattened normalised landmarks (FER+)", "",
        f"Command: `python benchmarks/flat_mlp.py --data {args.data} --out {args.out} --epochs {args.epochs} "
        f"--hidden {args.hidden} --threads {args.threads}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads = {args.threads}. "
        f"Samples: train {len(train)}, valid {len(indices['valid'])}, test {len(indices['test'])}. "
        f"MLP 1434 → {args.hidden} → {args.hidden} → 8, AdamW lr 1e-3, batch 128, {args.epochs} epochs; "
        "the epoch is chosen on Valid accuracy.", "",
        "| input | best epoch | valid accuracy | test accuracy | test balanced acc. | training time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, x in inputs.items():
        print(f"training on {name} ...", flush=True)
        result = train_mlp(x, labels, args.epochs, args.hidden, args.seed)
        best = result["best"]
        lines.append(f"| {name} | {best['epoch']} | {best['valid'].accuracy:.3f} | {best['test'].accuracy:.3f} | "
                     f"{best['test'].balanced_accuracy:.3f} | {result['seconds']:.0f} s |")
    lines.append("")
    write_text(args.out, "\n".join(lines))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
