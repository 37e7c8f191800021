"""Build a training stage from paths and run it (used by `facephi train` and `facephi reproduce`).

Stage 1 starts from a landmark encoder checkpoint (``facephi align``) and an LLM (embedded
name, GGUF, local folder or cached hub name); stage 2 starts from a FacePhi model folder,
normally the ``final/`` of a stage-1 run. The data are an extracted landmark set: training
uses its ``train`` split (class-balanced subset of ``limit_train`` samples when set), the loss
is also reported on a class-balanced subset of ``valid``. The splits are those of
``LandmarkSet.standard_splits(SPLIT_SEED)``, the same for every command, whatever the training
seed, so a test split carved from ``train`` never leaks into training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facephi.landmarks.store import SPLIT_SEED
from facephi.model.defaults import DEFAULT_LLM
from facephi.train.config import TrainCommand, TrainConfig
from facephi.train.stages import FINAL_DIR, StageResult, run_started, train_stage
from facephi.utils.errors import FacePhiError
from facephi.utils.runinfo import seed_everything

logger = logging.getLogger(__name__)


def check_stage_inputs(config: TrainConfig, data: str | Path, out: str | Path, *, encoder: str | Path | None = None,
                       init: str | Path | None = None, llm: str | None = None, gguf_file: str | None = None,
                       max_length: int | None = None, resume: bool = False) -> None:
    """Every check that needs no model weights: the sources the stage needs (the rules of
    :class:`TrainCommand`), complete; LLM resolvable, ``max_length`` long enough for the tokenizer,
    ``out`` free and writable."""
    from facephi.model.checkpoints import FACEPHI, check_model_dir
    from facephi.model.llm import check_language_model
    from facephi.utils.io import check_writable_dir

    TrainCommand.build(stage=config.stage, data=str(data), out=str(out), encoder=_text(encoder), init=_text(init), llm=llm,
                       gguf_file=gguf_file, max_length=max_length, resume=resume)
    if config.stage == 1:
        check_model_dir(_existing(encoder, "--encoder"), "--encoder")
        check_language_model(llm or DEFAULT_LLM, gguf_file)
    else:
        if check_model_dir(_existing(init, "--init"), "--init") != FACEPHI:
            raise FacePhiError(f"{init}: a landmark encoder, not a FacePhi model (--init); stage 1 takes it as --encoder")
    if not resume and run_started(Path(out)):
        raise FacePhiError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    check_writable_dir(out, "--out")
    _check_max_length(_stage_formatter(config, init, llm, gguf_file, max_length))


def _stage_formatter(config: TrainConfig, init: str | Path | None, llm: str | None, gguf_file: str | None,
                     max_length: int | None) -> Any:
    """The prompt formatter the stage's model will have, from its tokenizer alone (no LLM weights)."""
    from facephi.data.instruction import PromptFormatter, prepare_tokenizer
    from facephi.model.facephi import FacePhiConfig
    from facephi.model.llm import load_tokenizer
    from facephi.utils.io import read_json

    if config.stage == 1:
        tokenizer = load_tokenizer(llm or DEFAULT_LLM, gguf_file)
        length = max_length or FacePhiConfig.__dataclass_fields__["max_length"].default
        tokens = config.landmark_tokens
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(Path(init) / "tokenizer", local_files_only=True)
        saved = read_json(Path(init) / "config.json")
        length = max_length or saved["max_length"]
        tokens = saved.get("projector", {}).get("tokens", 1)
    prepare_tokenizer(tokenizer)
    return PromptFormatter(tokenizer, length, tokens)


def load_stage_model(config: TrainConfig, encoder: str | Path | None = None, init: str | Path | None = None,
                     llm: str | None = None, gguf_file: str | None = None,
                     max_length: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The FacePhiModel a stage starts from, and the sources to record in ``run.json``.

    ``max_length`` (token length of the training sequences) is a setting of the model
    (``FacePhiConfig.max_length``): stage 1 gives it to the new model (default 128), stage 2 changes
    the ``init`` model's when given.
    """
    from facephi.model.facephi import FacePhiConfig, FacePhiModel
    from facephi.model.projector import ProjectorConfig

    if config.stage == 1:
        from facephi.model.encoder import LandmarkEncoder

        encoder_path = _existing(encoder, "--encoder")
        landmark_encoder = LandmarkEncoder.from_pretrained(encoder_path)
        if llm is not None and Path(llm).expanduser().exists():  # a local LLM: record where it is
            llm = str(Path(llm).expanduser().resolve())
        facephi_config = FacePhiConfig(llm=llm or DEFAULT_LLM, gguf_file=gguf_file,
                                       projector=ProjectorConfig(input_dim=landmark_encoder.feature_dim,
                                                                 tokens=config.landmark_tokens),
                                       **({"max_length": max_length} if max_length else {}))
        model = FacePhiModel.from_encoder(landmark_encoder, facephi_config)
        sources = {"encoder": str(encoder_path.resolve()), "llm": facephi_config.llm, "gguf_file": gguf_file}
    else:
        init_path = _existing(init, "--init")
        model = FacePhiModel.from_pretrained(init_path)
        if config.lora and model.config.llm_weights == "full":
            raise FacePhiError(f"{init_path}: its LLM is fully fine-tuned; LoRA needs a stage-1 model")
        if max_length and model.config.max_length != max_length:
            from facephi.data.instruction import PromptFormatter

            model.config.max_length = max_length
            model.formatter = PromptFormatter(model.tokenizer, max_length, model.config.projector.tokens)
        sources = {"init": str(init_path.resolve()), "llm": model.config.llm, "gguf_file": model.config.gguf_file}
    if getattr(model.encoder, "normalizer", None) is None:
        raise FacePhiError(f"{sources.get('encoder') or sources.get('init')}: the landmark encoder has no "
                           "normaliser; train it with `facephi align`")
    sources["max_length"] = model.config.max_length
    return model, sources


def _check_max_length(formatter: Any) -> None:
    """Refuse a ``max_length`` too short for a training sequence (longest instruction and answer)."""
    from facephi.data.templates import ANSWER_TEMPLATES, INSTRUCTIONS
    from facephi.labels import CLASSES, display_name

    answers = [t.format(emotion=display_name(name)) for t in ANSWER_TEMPLATES for name in CLASSES]
    try:
        for instruction in INSTRUCTIONS:
            for answer in answers:
                formatter.encode_train(instruction, answer)
    except FacePhiError:
        raise FacePhiError(f"max_length (--max-length): {formatter.max_length} tokens cannot hold the longest "
                           "instruction and answer, even without the system prompt; raise it (default 128)") from None


def load_stage_data(model: Any, landmark_set: Any, config: TrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(train set, valid set or None, data description) of a ``LandmarkSet`` as instruction datasets for ``model``."""
    from facephi.data.dataset import LandmarkDataset
    from facephi.data.instruction import InstructionDataset

    data_path = Path(landmark_set.root)
    train_idx = landmark_set.select("train", config.limit_train, config.limit_policy, config.seed)
    valid_labels = landmark_set.labels[landmark_set.standard_splits(SPLIT_SEED)["valid"]]
    valid_idx = (landmark_set.select("valid", config.limit_valid, config.limit_policy, config.seed)
                 if (valid_labels >= 0).any() else np.zeros(0, dtype=np.int64))

    votes = answer_votes(landmark_set, config)
    weights = None
    if config.class_weights != "none":
        from facephi.labels import CLASSES
        from facephi.train.weights import class_weights

        weights = class_weights(landmark_set.labels[train_idx], len(CLASSES), config.class_weights).numpy()

    def instructions(indices: np.ndarray, training: bool) -> Any:
        base = LandmarkDataset(landmark_set, indices, model.encoder.normalizer)
        return InstructionDataset(base, model.formatter, seed=config.seed, votes=votes if training else None,
                                  class_weights=weights if training else None)

    described = {
        "data": str(data_path.resolve()), "split_seed": SPLIT_SEED,
        "train_class_counts": np.bincount(landmark_set.labels[train_idx], minlength=8).tolist(),
        "valid_class_counts": np.bincount(landmark_set.labels[valid_idx], minlength=8).tolist(),
    }
    if weights is not None:
        described["train_class_weights"] = [round(float(w), 6) for w in weights]
    return (instructions(train_idx, True), (instructions(valid_idx, False) if len(valid_idx) else None),
            described)


def answer_votes(landmark_set: Any, config: TrainConfig) -> np.ndarray | None:
    """The crowd votes the training answers are drawn from (``answer_labels="votes"``), else None;
    a ``FacePhiError`` when the landmark set has none."""
    if config.answer_labels != "votes":
        return None
    if landmark_set.votes is None:
        raise FacePhiError(f"--answer-labels votes: {landmark_set.root} has no crowd votes (FER+ data has them: "
                           "votes_* columns in samples.csv)")
    return landmark_set.votes


def run_stage(config: TrainConfig, data: str | Path, out: str | Path, *, encoder: str | Path | None = None,
              init: str | Path | None = None, llm: str | None = None, gguf_file: str | None = None,
              max_length: int | None = None, resume: bool = False, stop_after: int | None = None,
              progress: bool = True) -> StageResult:
    """Check every input, load the stage's model and data from paths and train it into ``out``."""
    from facephi.landmarks.store import LandmarkSet

    out = Path(out)
    landmark_set = LandmarkSet.load(_existing(data, "--data"))  # before --out is made: a bad dataset leaves nothing
    answer_votes(landmark_set, config)
    check_stage_inputs(config, data, out, encoder=encoder, init=init, llm=llm, gguf_file=gguf_file, max_length=max_length,
                       resume=resume)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)  # the new projector's initialisation
    model, sources = load_stage_model(config, encoder=encoder, init=init, llm=llm, gguf_file=gguf_file,
                                      max_length=max_length)
    train_set, valid_set, described = load_stage_data(model, landmark_set, config)
    logger.info("stage %d: %d training samples, %d valid samples", config.stage, len(train_set),
                len(valid_set) if valid_set is not None else 0)
    return train_stage(model, train_set, config, out, valid_set=valid_set, sources={**sources, **described},
                       resume=resume, stop_after=stop_after, progress=progress)


@dataclass
class StageRun:
    """One stage of :func:`run_both_stages`: where its model is and what this call spent on it."""

    stage: int
    run_dir: Path
    config: TrainConfig
    seconds: float | None  # wall time of this call; None when the stage had finished before
    resumed: bool  # continued from an interrupted run

    @property
    def model_dir(self) -> Path:
        return self.run_dir / FINAL_DIR


def run_both_stages(configs: Callable[[int], TrainConfig], data: str | Path, base: str | Path, *,
                    encoder: str | Path, llm: str | None = None, gguf_file: str | None = None,
                    max_length: int | None = None, progress: bool = True,
                    on_stage_done: Callable[[StageRun], None] | None = None) -> list[StageRun]:
    """Stage 1 into ``base/stage1``, then stage 2 from its final model into ``base/stage2``.

    ``configs(stage)`` gives each stage's settings; ``max_length`` is the new model's (stage 1). A finished stage is reused, an interrupted one
    resumed, so calling this again continues where a previous call stopped. ``on_stage_done`` is
    called after each stage (e.g. to record its timing before the next stage starts).
    """
    runs: list[StageRun] = []
    for stage in (1, 2):
        run_dir = Path(base) / f"stage{stage}"
        config = configs(stage)
        if (run_dir / FINAL_DIR / "config.json").is_file():
            runs.append(StageRun(stage, run_dir, config, seconds=None, resumed=False))
        else:
            resumed = run_started(run_dir)
            sources = ({"encoder": encoder, "llm": llm, "gguf_file": gguf_file, "max_length": max_length}
                       if stage == 1 else {"init": runs[0].model_dir})
            started = time.perf_counter()
            result = run_stage(config, data, run_dir, resume=resumed, progress=progress, **sources)
            if not result.finished:
                raise FacePhiError(f"{run_dir}: stage {stage} did not finish")
            runs.append(StageRun(stage, run_dir, config, time.perf_counter() - started, resumed))
        if on_stage_done is not None:
            on_stage_done(runs[-1])
    return runs


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _existing(path: str | Path, flag: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FacePhiError(f"{path}: not found ({flag})")
    return path
