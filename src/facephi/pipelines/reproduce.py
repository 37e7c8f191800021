"""`facephi reproduce`: the paper's Table 1 protocol, end to end, on any extracted landmark set.

Rows (all scored on the same test split, by the same metrics code):

(a) the LLM without landmark training: untrained projector, LLM as shipped (the analogue of the
    paper's untuned PointLLM row);
(b) classification-pretrained PointMLP + LLM, two stages (the paper's 10.2 % ablation);
(c) FacePhi: text-aligned PointMLP + LLM, two stages (the paper's 27.7 %);
(d) the encoders' own classifiers: the classification head (the paper's 50 %) and, beside it,
    the aligned encoder's zero-shot caption matching;
(e) chance (uniform guess, in expectation) and the majority class of the train split.

Every step writes into its own folder under ``RUN`` and is skipped when already finished, so
re-running the command continues an interrupted reproduction (training steps resume from their
last checkpoint). ``RUN/steps.json`` records the settings each step was made with (data path and
content fingerprint, seed, preset, encoder and stage settings, LLM, test subset); a rerun whose
settings differ for a recorded step is refused, naming them, unless ``overwrite`` recomputes it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facephi.config import differences
from facephi.labels import CLASSES
from facephi.model.defaults import DEFAULT_LLM
from facephi.pipelines.config import ReproduceConfig
from facephi.utils.errors import FacePhiError
from facephi.utils.io import read_json, write_json, write_text

logger = logging.getLogger(__name__)

PAPER_ACCURACY: dict[str, str] = {
    "zero_shot": "11.4 (PointLLM, untuned)",
    "facephi_classify": "10.2",
    "facephi_align": "27.7",
    "encoder_classify": "50",
    "encoder_align": "–",
    "chance": "12.5",
    "majority": "–",
}
ROW_TITLES: dict[str, str] = {
    "zero_shot": "(a) LLM, no landmark training (untrained projector)",
    "facephi_classify": "(b) classification PointMLP + LLM, 2 stages",
    "facephi_align": "(c) FacePhi: aligned PointMLP + LLM, 2 stages",
    "encoder_classify": "(d) PointMLP classifier (encoder's own head)",
    "encoder_align": "(d') aligned PointMLP, zero-shot captions",
    "chance": "(e) chance (uniform guess)",
    "majority": "(e) majority class of train",
}
STEPS_FILE = "steps.json"
"""``RUN/steps.json``: for every step started so far, the settings it was made with."""
# AlignConfig / TrainConfig fields that do not change a step's result.
_NOT_RESULTS = ("data", "out", "resume", "overwrite", "threads", "fast_path", "eval_batch_size", "save_every",
                "keep_checkpoints", "log_every")


def _result_settings(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_RESULTS}


class Reproduction:
    """Runs (or reuses) every step of Table 1 inside ``config.out``.

    :meth:`prepare` checks every input and every earlier step's settings before any work.
    """

    def __init__(self, config: ReproduceConfig, progress: bool = True) -> None:
        self.config, self.progress = config, progress
        self.out = Path(config.out)
        self.rows: dict[str, dict[str, Any]] = {}
        self.settings: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ checks first
    def prepare(self) -> None:
        """Data, LLM, output folder and the settings of earlier steps, before anything is trained."""
        from facephi.landmarks.store import LandmarkSet
        from facephi.model.llm import check_language_model
        from facephi.utils.io import check_writable_dir, file_digest

        data = Path(self.config.data)
        if not data.is_dir():
            raise FacePhiError(f"{data}: not found (--data)")
        self.landmark_set = LandmarkSet.load(data)
        for split in ("train", "valid", "test"):
            self.landmark_set.select(split)  # each split exists and is labelled
        check_language_model(self.config.llm or DEFAULT_LLM, self.config.gguf_file)
        check_writable_dir(self.out, "--out")
        common = {"data": str(data.resolve()), "data_fingerprint": file_digest(data / "landmarks.npy",
                                                                               data / "samples.csv"),
                  "seed": self.config.seed, "preset": self.config.preset}
        llm = {"llm": self.config.llm or DEFAULT_LLM, "gguf_file": self.config.gguf_file,
               "max_length": self.config.max_length}
        scoring = {"eval_limit": self.config.eval_limit}
        generation = {**scoring, "max_new_tokens": self.config.max_new_tokens}
        stages = {f"stage{s}": _result_settings(self.config.stage_config(s)) for s in (1, 2)}
        for objective in ("align", "classify"):
            encoder = {**common, "encoder": _result_settings(self.config.encoder_config(objective))}
            self.settings[f"encoders/{objective}"] = encoder
            self.settings[f"eval/encoder_{objective}"] = {**encoder, **scoring}
            self.settings[f"llm/{objective}"] = {**encoder, **llm, **stages}
            self.settings[f"eval/facephi_{objective}"] = {**encoder, **llm, **stages, **generation}
        self.settings["eval/zero_shot"] = {**self.settings["encoders/align"], **llm, **generation}
        self.settings["baselines"] = {**common, **scoring}
        self._check_recorded()

    def _check_recorded(self) -> None:
        """Refuse (or with --overwrite, remove) the steps recorded with other settings."""
        path = self.out / STEPS_FILE
        recorded: dict[str, Any] = read_json(path) if path.is_file() else {}
        stale = {step: differences(recorded[step], now) for step, now in self.settings.items()
                 if step in recorded and recorded[step] != now}
        if not stale:
            return
        if not self.config.overwrite:
            first, changes = next(iter(stale.items()))
            raise FacePhiError(
                f"{self.out}: {len(stale)} finished or started step(s) were made with other settings "
                f"({first}: {'; '.join(changes[:4])}{' ...' if len(changes) > 4 else ''}); pass --overwrite to "
                "recompute them, or choose another --out")
        for step in stale:
            logger.info("recomputing %s (made with other settings)", step)
            shutil.rmtree(self.out / step, ignore_errors=True)
            recorded.pop(step)
        write_json(path, recorded)

    def _start(self, step: str) -> None:
        """Record the settings of ``step`` before its work starts (an interrupted step is checked too)."""
        path = self.out / STEPS_FILE
        recorded = read_json(path) if path.is_file() else {}
        if recorded.get(step) != self.settings[step]:
            write_json(path, {**recorded, step: self.settings[step]})

    # ------------------------------------------------------------------ steps
    def encoder(self, objective: str) -> Path:
        """Train (or reuse) the ``align`` or ``classify`` encoder; its folder is the checkpoint."""
        from facephi.train.align import has_checkpoint, train_encoder

        self._start(f"encoders/{objective}")
        config = self.config.encoder_config(objective)
        out = Path(config.out)
        metrics_path = out / "metrics.json"
        if metrics_path.is_file() and read_json(metrics_path).get("test") is not None:
            return out
        resume = has_checkpoint(out)
        logger.info("training the %s encoder into %s%s", objective, out, " (resuming)" if resume else "")
        train_encoder(config.replace(resume=resume, overwrite=not resume), progress=self.progress)
        return out

    def llm_stages(self, objective: str, encoder_dir: Path) -> Path:
        """Stage 1 then stage 2 on top of ``encoder_dir``; returns the stage-2 model folder."""
        from facephi.train.runner import run_both_stages

        self._start(f"llm/{objective}")
        runs = run_both_stages(self.config.stage_config, self.config.data, self.out / "llm" / objective,
                               encoder=encoder_dir, llm=self.config.llm, gguf_file=self.config.gguf_file,
                               max_length=self.config.max_length, progress=self.progress)
        return runs[-1].model_dir

    def evaluate(self, name: str, build: Callable[[], tuple[str, Any]]) -> dict[str, Any]:
        """Evaluate one row into ``RUN/eval/<name>`` (reusing a finished evaluation)."""
        from facephi.eval.evaluate import EvalResult, evaluate_encoder, evaluate_model

        self._start(f"eval/{name}")
        out = self.out / "eval" / name
        finished = EvalResult.load_if_finished(out)
        if finished is not None:
            return finished.metrics.to_dict()
        kind, model = build()
        common = {"split": "test", "seed": self.config.seed, "limit": self.config.eval_limit, "out_dir": out,
                  "progress": self.progress}
        if kind == "encoder":
            result = evaluate_encoder(model, self.landmark_set, **common)
        else:
            result = evaluate_model(model, self.landmark_set, batch_size=self.config.eval_batch_size,
                                    max_new_tokens=self.config.max_new_tokens, **common)
        return result.metrics.to_dict()

    # ------------------------------------------------------------------ the table
    def run(self) -> dict[str, Any]:
        from facephi.model.encoder import LandmarkEncoder
        from facephi.model.facephi import FacePhiConfig, FacePhiModel
        from facephi.model.projector import ProjectorConfig
        from facephi.utils.runinfo import run_info, seed_everything

        self.prepare()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        write_json(self.out / "run.json", run_info(self.config.seed, settings=self.config.to_dict()))
        self._start("baselines")
        self._baselines()

        encoders = {objective: self.encoder(objective) for objective in ("classify", "align")}
        for objective, path in encoders.items():
            metrics = self.evaluate(f"encoder_{objective}", lambda p=path: ("encoder", LandmarkEncoder.from_pretrained(p)))
            self._add(f"encoder_{objective}", metrics, self._seconds(path))

        def zero_shot() -> tuple[str, Any]:
            seed_everything(self.config.seed)  # the untrained projector's initialisation
            encoder = LandmarkEncoder.from_pretrained(encoders["align"])
            config = FacePhiConfig(llm=self.config.llm or DEFAULT_LLM, gguf_file=self.config.gguf_file,
                                   projector=ProjectorConfig(input_dim=encoder.feature_dim),
                                   **({"max_length": self.config.max_length} if self.config.max_length else {}))
            return "facephi", FacePhiModel.from_encoder(encoder, config)

        self._add("zero_shot", self.evaluate("zero_shot", zero_shot), 0.0)

        for objective in ("align", "classify"):  # FacePhi (row c) first
            final = self.llm_stages(objective, encoders[objective])
            metrics = self.evaluate(f"facephi_{objective}", lambda f=final: ("facephi", FacePhiModel.from_pretrained(f)))
            seconds = self._seconds(encoders[objective]) + sum(
                self._seconds(self.out / "llm" / objective / f"stage{s}") for s in (1, 2))
            self._add(f"facephi_{objective}", metrics, seconds)
        return self.rows

    def _baselines(self) -> None:
        """Chance and the train majority class, scored on the same test samples."""
        from facephi.scoring.metrics import compute_metrics

        landmark_set = self.landmark_set
        test = landmark_set.select("test", self.config.eval_limit, "random", self.config.seed)
        train = landmark_set.select("train")
        y_true = landmark_set.labels[test]
        majority = int(np.bincount(landmark_set.labels[train], minlength=len(CLASSES)).argmax())
        self._add("majority", compute_metrics(y_true, np.full_like(y_true, majority)).to_dict(), 0.0,
                  note=f"always '{CLASSES[majority]}'")
        present = np.unique(y_true)
        chance = {"accuracy": 1 / len(CLASSES), "balanced_accuracy": 1 / len(CLASSES), "macro_f1": None,
                  "miss_rate": 0.0, "n": int(len(y_true))}
        self._add("chance", chance, 0.0, note=f"expected value over {len(present)} classes present in test")

    def _add(self, name: str, metrics: dict[str, Any], seconds: float, note: str = "") -> None:
        self.rows[name] = {
            "title": ROW_TITLES[name], "paper_accuracy": PAPER_ACCURACY[name],
            "accuracy": metrics.get("accuracy"), "balanced_accuracy": metrics.get("balanced_accuracy"),
            "macro_f1": metrics.get("macro_f1"), "miss_rate": metrics.get("miss_rate"),
            "n": metrics.get("n"), "train_seconds": seconds, "note": note,
        }
        self.write_table()

    @staticmethod
    def _seconds(run_dir: Path) -> float:
        """Training time recorded in an encoder's or a stage's ``metrics.json``."""
        return float(read_json(run_dir / "metrics.json").get("train_seconds", 0.0))

    def write_table(self) -> None:
        """``RUN/table1.md`` and ``RUN/table1.json`` from the rows finished so far."""
        order = [k for k in ROW_TITLES if k in self.rows]
        write_json(self.out / "table1.json", {"config": self.config.to_dict(),
                                               "rows": {k: self.rows[k] for k in order}})
        write_text(self.out / "table1.md", format_table(self.rows, self.config))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_table(rows: dict[str, dict[str, Any]], config: ReproduceConfig) -> str:
    """Table 1 as markdown: ours beside the paper's accuracy."""
    lines = [
        f"# Table 1 on `{config.data}` (preset `{config.preset}`, seed {config.seed})",
        "",
        "All rows are scored on the same test samples"
        + (f" (a seeded subset of {config.eval_limit})" if config.eval_limit else "")
        + ". Accuracy is the paper's metric (keyword matching for LLM rows, first class named).",
        "",
        "| row | accuracy % | macro recall % | macro-F1 % | keyword miss % | train time | paper accuracy % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ROW_TITLES:
        if key not in rows:
            continue
        row = rows[key]
        minutes = row["train_seconds"] / 60
        title = row["title"] + (f" — {row['note']}" if row["note"] else "")
        lines.append(f"| {title} | {_pct(row['accuracy'])} | {_pct(row['balanced_accuracy'])} | "
                     f"{_pct(row['macro_f1'])} | {_pct(row['miss_rate'])} | "
                     f"{minutes:.1f} min | {row['paper_accuracy']} |")
    lines += ["", "Paper (AffectNet, Phi-2, A100): ChatGPT-4 N/A, PointLLM 11.4, PointLLM+LoRA 9.3, "
              "PointMLP(classification)+Phi-2 10.2, FacePhi 27.7; its PointMLP classifier 50.", ""]
    return "\n".join(lines)


def reproduce(config: ReproduceConfig, progress: bool = True) -> dict[str, Any]:
    """Run Table 1 and return its rows (also written to ``RUN/table1.{md,json}``)."""
    started = time.perf_counter()
    rows = Reproduction(config, progress).run()
    logger.info("reproduction finished in %.0f s", time.perf_counter() - started)
    return rows
