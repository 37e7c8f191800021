"""Finished ``facephi eval`` folders written by hand, for the benchmark tables' tests."""

from __future__ import annotations

import json

from facephi.labels import CLASSES
from facephi.scoring.metrics import compute_metrics


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
