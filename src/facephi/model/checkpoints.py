"""What a model folder is, and whether it is complete, decided before anything heavy is loaded.

Two kinds of model folders exist, told apart by the ``config_type`` of their
``config.json`` (:func:`checkpoint_type`):

* a landmark encoder (``LandmarkEncoder.save_pretrained``, or the output folder of ``facephi
  align``): ``config.json`` + ``model.safetensors``;
* a FacePhi model (``FacePhiModel.save_pretrained``, e.g. ``RUN/final`` of ``facephi train``):
  ``config.json``, ``encoder/``, ``projector.safetensors``, ``tokenizer/`` and ``llm/`` (fine-tuned
  LLM) or ``adapter/adapter.safetensors`` (LoRA) or a reference to a base LLM that must be loadable.

:func:`check_model_dir` verifies all of that cheaply (JSON parsed, safetensors headers read, no
tensor loaded) so that an incomplete folder fails in a second with one line naming the file,
rather than after an LLM was loaded. A training run folder given where a model is expected is
recognised and the message points to its ``final/`` model.

This module imports nothing heavy at import time (no torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facephi.utils.errors import FacePhiError
from facephi.utils.io import check_safetensors

ENCODER = "encoder"
FACEPHI = "facephi"
ENCODER_CONFIG_TYPE = "facephi-landmark-encoder"
"""``config_type`` of a landmark encoder's ``config.json`` (``facephi.model.encoder.CONFIG_TYPE``)."""
FACEPHI_CONFIG_TYPE = "facephi"
"""``config_type`` of a FacePhi model's ``config.json`` (``facephi.model.facephi.CONFIG_TYPE``)."""

CONFIG_NAME = "config.json"
RUN_MODEL_DIR = "final"
"""Where a ``facephi train`` run folder keeps its model (``facephi.train.stages.FINAL_DIR``)."""
_RUN_MARKERS = ("checkpoints", "run.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model")
"""Any one of these (with ``tokenizer_config.json``) makes a saved tokenizer folder."""


def _suffix(flag: str | None) -> str:
    return f" ({flag})" if flag else ""


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``config.json`` as a dict; FacePhiError naming the file when missing, not UTF-8, not JSON
    or not a JSON object."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FacePhiError(f"{path}: missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise FacePhiError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FacePhiError(f"{path}: invalid JSON ({exc})") from None
    except OSError as exc:
        raise FacePhiError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise FacePhiError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _config_kind(config: dict[str, Any]) -> str | None:
    """ENCODER or FACEPHI by the config's ``config_type``; None for any other config."""
    return {ENCODER_CONFIG_TYPE: ENCODER, FACEPHI_CONFIG_TYPE: FACEPHI}.get(config.get("config_type"))


def _is_run_dir(path: Path) -> bool:
    return (path / RUN_MODEL_DIR).is_dir() or any((path / marker).exists() for marker in _RUN_MARKERS)


def _run_dir_error(path: Path, flag: str | None) -> FacePhiError:
    final = path / RUN_MODEL_DIR
    if (final / CONFIG_NAME).is_file():
        return FacePhiError(f"{path} is a training run folder, not a model; the model is in {final}{_suffix(flag)}")
    return FacePhiError(f"{path} is a training run folder, not a model, and holds no finished model yet "
                        f"(finish or resume the run){_suffix(flag)}")


def checkpoint_type(path: str | os.PathLike[str], flag: str | None = None) -> str:
    """``"facephi"`` or ``"encoder"``, from the ``config_type`` of ``config.json``.

    Only ``config.json`` is read (:func:`check_model_dir` checks the rest). A training run folder
    is reported as such, with where its model is.
    """
    path = Path(path).expanduser()
    config_path = path / CONFIG_NAME
    if not path.exists():
        raise FacePhiError(f"{path}: not found{_suffix(flag)}")
    if not path.is_dir():
        raise FacePhiError(f"{path}: not a folder; a model is a folder with {CONFIG_NAME}{_suffix(flag)}")
    if not config_path.is_file():
        if _is_run_dir(path):
            raise _run_dir_error(path, flag)
        if (path / "landmarks.npy").is_file() and (path / "samples.csv").is_file():
            raise FacePhiError(f"{path}: an extracted landmark set (facephi extract), not a model{_suffix(flag)}")
        raise FacePhiError(f"{config_path}: missing; {path} is not a facephi checkpoint folder{_suffix(flag)}")
    config = read_config(config_path)
    kind = _config_kind(config)
    if kind is not None:
        return kind
    if _is_run_dir(path):
        raise _run_dir_error(path, flag)
    found = config.get("config_type")
    raise FacePhiError(f"{config_path}: config_type {found!r} is neither a FacePhi model ({FACEPHI_CONFIG_TYPE!r}) "
                       f"nor a landmark encoder ({ENCODER_CONFIG_TYPE!r})")


def _check_encoder_files(folder: Path) -> None:
    """An encoder folder's files: a JSON-object ``config.json`` and a readable ``model.safetensors``."""
    read_config(folder / CONFIG_NAME)
    check_safetensors(folder / "model.safetensors")


def _check_tokenizer(folder: Path) -> None:
    if not folder.is_dir():
        raise FacePhiError(f"{folder}: missing (the model's tokenizer folder)")
    if not (folder / "tokenizer_config.json").is_file():
        raise FacePhiError(f"{folder / 'tokenizer_config.json'}: missing")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FacePhiError(f"{folder}: no tokenizer file ({', '.join(TOKENIZER_FILES)})")
    read_config(folder / "tokenizer_config.json")


def _check_facephi_files(path: Path, config: dict[str, Any]) -> None:
    from facephi.model.llm import DEFAULT_LLM, describe_language_model, language_model_problem

    encoder = path / "encoder"
    if not encoder.is_dir():
        raise FacePhiError(f"{encoder}: missing (the model's landmark encoder folder)")
    _check_encoder_files(encoder)
    check_safetensors(path / "projector.safetensors")
    _check_tokenizer(path / "tokenizer")
    weights = config.get("llm_weights", "base")
    llm_dir = path / "llm"
    if weights == "full" or llm_dir.is_dir():
        if not llm_dir.is_dir():
            raise FacePhiError(f"{llm_dir}: missing (config.json says llm_weights 'full': the fine-tuned LLM)")
        problem = language_model_problem(str(llm_dir))
        if problem is not None:
            raise FacePhiError(f"{llm_dir} (the model's LLM) {problem}")
        return
    if weights == "lora":
        check_safetensors(path / "adapter" / "adapter.safetensors")
    elif weights != "base":
        raise FacePhiError(f"{path / CONFIG_NAME}: llm_weights {weights!r} is not 'base', 'full' or 'lora'")
    llm, gguf_file = config.get("llm", DEFAULT_LLM), config.get("gguf_file")
    if not isinstance(llm, str) or not (gguf_file is None or isinstance(gguf_file, str)):
        raise FacePhiError(f"{path / CONFIG_NAME}: llm / gguf_file must be strings")
    problem = language_model_problem(llm, gguf_file)
    if problem is not None:
        raise FacePhiError(f"model {path} uses the base LLM {describe_language_model(llm, gguf_file)}, "
                           f"which {problem}")


def check_model_dir(path: str | os.PathLike[str], flag: str | None = "--model", expect: str | None = None) -> str:
    """Check that ``path`` is a complete model folder and return its kind (ENCODER or FACEPHI).

    Cheap: JSON files are parsed, safetensors headers read, the base LLM located (see the module
    docstring); nothing is loaded. Any problem is a one-line FacePhiError naming the file (and
    ``flag``, the command-line option that gave ``path``, when not None). ``expect`` (ENCODER or
    FACEPHI) rejects a folder of the other kind first.
    """
    path = Path(path).expanduser()
    kind = checkpoint_type(path, flag)
    if expect == ENCODER and kind == FACEPHI:
        raise FacePhiError(f"{path} is a FacePhi model, not a landmark encoder; its encoder is "
                           f"{path / 'encoder'}{_suffix(flag)}")
    if expect == FACEPHI and kind == ENCODER:
        raise FacePhiError(f"{path / CONFIG_NAME}: config_type {ENCODER_CONFIG_TYPE!r} is a landmark encoder, "
                           f"not a FacePhi model{_suffix(flag)}")
    if kind == ENCODER:
        _check_encoder_files(path)
    else:
        _check_facephi_files(path, read_config(path / CONFIG_NAME))
    return kind
