"""Content fingerprints of what an evaluation scores: the model and the data.

An evaluation resumes (``predictions.partial.jsonl``) only when its recorded settings are equal,
these fingerprints included, so that retraining a model into the same folder or extracting the
data again never mixes old and new predictions: paths are recorded too, but only content decides.

* :func:`model_fingerprint`: SHA-256 of the model's config (``config.to_dict()`` where it has one)
  and of every tensor of its ``state_dict`` (name, dtype, shape, bytes): the weights as loaded, so
  the same for a model read from a folder and the same model in memory, and changed by any
  retraining (base LLM, adapter, projector, encoder and its normaliser's buffers alike).
* :func:`data_fingerprint`: a ``facephi extract`` folder's ``landmarks.npy`` + ``samples.csv``
  (``utils.io.file_digest``, the value ``facephi reproduce`` records), and ``failures.csv`` apart
  (:func:`failures_fingerprint`, the photos without a face an evaluation counts).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from facephi.landmarks.store import LandmarkSet
from facephi.utils.io import file_digest

DATA_FILES = ("landmarks.npy", "samples.csv")
"""The files of an extracted dataset whose content is its fingerprint."""


def model_fingerprint(model: Any) -> str:
    """SHA-256 of ``model``'s config and weights (see the module docstring)."""
    import torch

    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    state = model.state_dict() if isinstance(model, torch.nn.Module) else {}
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(root: str | Path) -> str:
    """SHA-256 of an extracted dataset's :data:`DATA_FILES`."""
    return file_digest(*(Path(root) / name for name in DATA_FILES))


def failures_fingerprint(root: str | Path) -> str | None:
    """SHA-256 of an extracted dataset's ``failures.csv``, None where it has none."""
    path = Path(root) / "failures.csv"
    return file_digest(path) if path.is_file() else None


def dataset_fingerprint(data: Any) -> dict[str, Any]:
    """The fingerprints of what an evaluation reads: an extracted dataset's files (``LandmarkSet``),
    (its arrays where it was built in memory) or, for any other dataset of ``{"points", "label",
    "index"}`` items, a digest of its items."""
    if isinstance(data, LandmarkSet) and all((Path(data.root) / name).is_file() for name in DATA_FILES):
        return {"data_fingerprint": data_fingerprint(data.root), "failures_fingerprint": failures_fingerprint(data.root)}
    digest = hashlib.sha256()
    if isinstance(data, LandmarkSet):  # built in memory: its arrays
        for array in (data.landmarks, data.labels, data.splits.astype("U"), data.sizes):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {"data_fingerprint": digest.hexdigest()}
    for position in range(len(data)):
        item = data[position]
        points = np.ascontiguousarray(np.asarray(item["points"], dtype=np.float32))
        digest.update(f"{int(item['index'])}|{int(item['label'])}|".encode())
        digest.update(points.tobytes())
    return {"data_fingerprint": digest.hexdigest()}
