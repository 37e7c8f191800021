"""Finished ``facephi eval`` folders written by hand, for the benchmark tables' tests, and a
folder dataset with photos without a face and a model that answers from the data's content."""

from __future__ import annotations

import csv
import json

import numpy as np
import torch

from facephi.labels import CLASSES
from facephi.landmarks.normalize import Normalizer
from facephi.scoring.metrics import compute_metrics

K = len(CLASSES)


def write_eval(folder, truth, scored, answered=None, split="test"):
    """A finished evaluation folder: scores put most mass on ``scored``; ``answered`` = generated classes."""
    folder.mkdir(parents=True)
    records = []
    for i, (t, s) in enumerate(zip(truth, scored)):
        scores = {name: (0.65 if k == s else 0.05) for k, name in enumerate(CLASSES)}
        record = {"index": i, "true_index": int(t), "scores": scores}
        if answered is not None:
            record["predicted_index"] = int(answered[i])
        records.append(record)
    pred = answered if answered is not None else scored
    metrics = compute_metrics(truth, pred).to_dict()
    mode = "both" if answered is not None else "score"
    metrics.update(settings={"mode": mode, "split": split}, seconds=1.0)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def write_photo_folder(tmp_path, n=16, failed=(("anger", 2), ("happiness", 1)), label_column=False):
    """A folder of class folders (the source, empty files: readers open no image) and its extraction:
    ``n`` faces, all in split ``train``, and ``failed`` photos without a face per class."""
    source, out = tmp_path / "photos", tmp_path / "data"
    rng = np.random.default_rng(0)
    rows, failures = [], []
    for i in range(n):
        label = CLASSES[i % K]
        (source / label).mkdir(parents=True, exist_ok=True)
        (source / label / f"face{i:02d}.jpg").write_bytes(b"")
        rows.append([i, f"{label}/face{i:02d}.jpg", label, "train", 64, 48])
    for label, count in failed:
        for j in range(count):
            (source / label).mkdir(parents=True, exist_ok=True)
            (source / label / f"noface{j}.jpg").write_bytes(b"")
            failures.append([f"{label}/noface{j}.jpg", "train", "no face", "", *([label] if label_column else [])])
    out.mkdir()
    np.save(out / "landmarks.npy", rng.uniform(0.2, 0.8, (n, 478, 3)).astype(np.float32))
    with open(out / "samples.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["index", "path", "label", "split", "width", "height"], *rows])
    with open(out / "failures.csv", "w", newline="") as fh:
        header = ["path", "split", "reason", "detail", *(["label"] if label_column else [])]
        csv.writer(fh).writerows([header, *failures])
    (out / "manifest.json").write_text(json.dumps({"source": str(source), "reader": "folder", "options": {}}))
    return out


class Encoder(torch.nn.Module):
    normalizer = Normalizer(align=False)


class FirstCoordinateModel(torch.nn.Module):
    """Answers and scores from the first landmark's x (so the answers depend on the data's content);
    ``fail_after`` batches, then an interruption."""

    def __init__(self, fail_after=None):
        super().__init__()
        self.encoder = Encoder()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fail_after, self.calls = fail_after, []

    def _classes(self, points):
        return [(int(abs(float(p[0, 0])) * 1000) + int(self.weight.item())) % K for p in points]

    def answer(self, points, instructions, max_new_tokens):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(len(points))
        return [f"It shows {CLASSES[k]}." for k in self._classes(points)]

    def class_log_likelihoods(self, points, instructions, templates="first"):
        scores = torch.full((len(points), K), -5.0)
        for row, k in enumerate(self._classes(points)):
            scores[row, k] = -1.0
        return scores
