"""Settings of the pipeline commands ``facephi reproduce`` and ``facephi demo`` (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facephi.config import Config, setting
from facephi.eval.config import MAX_NEW_TOKENS
from facephi.model.defaults import DEFAULT_LLM
from facephi.presets import REPRODUCE_PRESETS, lookup

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_IMAGES = REPO_ROOT / "examples" / "images"


@dataclass
class ReproduceConfig(Config):
    """Settings of ``facephi reproduce`` (Table 1). Every step records the settings it depends on."""

    data: str = setting(help="extracted landmark set (facephi extract)")
    out: str = setting(help="run directory (created, or continued)")
    preset: str = setting("cpu", choices=tuple(REPRODUCE_PRESETS),
                          help="encoder and LLM-stage hyper-parameters (facephi.presets.REPRODUCE_PRESETS)")
    llm: str | None = setting(None, metavar="NAME_OR_PATH",
                              help=f"causal LM, by name or local path (default: the embedded {DEFAULT_LLM})")
    gguf_file: str | None = setting(None, help="GGUF file name inside --llm")
    seed: int = setting(0, help="seed of encoders, LLM stages, instruction draws and the test subset")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: the presets')")
    eval_limit: int | None = setting(None, min=1, unlimited=True,
                                     help="score every row on the same seeded random subset of N test samples "
                                          "(default: the preset's: 1000 for cpu, all for paper)")
    eval_batch_size: int = setting(16, min=1, max=4096, help="samples per evaluation batch")
    max_new_tokens: int = setting(32, min=1, max=MAX_NEW_TOKENS, help="answer length limit in tokens")
    max_length: int | None = setting(None, min=16, max=4096,
                                     help="token length of the LLM training sequences (default: 128)")
    encoder_options: dict[str, Any] = setting(default_factory=dict, flag="--encoder-option", metavar="KEY=VALUE",
                                              help="change an AlignConfig setting of both encoders' preset "
                                                   "(e.g. epochs=5); repeatable")
    stage_options: dict[str, Any] = setting(default_factory=dict, flag="--stage-option", metavar="KEY=VALUE",
                                            help="change a TrainConfig setting of both LLM stages' preset "
                                                 "(e.g. limit_train=8000); repeatable")
    overwrite: bool = setting(False, help="recompute the steps that were made with other settings "
                                          "(without it such a rerun is refused)")

    def check(self) -> None:
        """Build every encoder and stage configuration once, so a bad option fails before any training."""
        from facephi.utils.errors import FacePhiError

        for name, build in (("encoder_options", lambda: self.encoder_config("classify")),
                            ("stage_options", lambda: [self.stage_config(stage) for stage in (1, 2)])):
            try:
                build()
            except FacePhiError as exc:
                raise self.error(name, str(exc)) from None

    @classmethod
    def for_preset(cls, name: str, **values: Any) -> "ReproduceConfig":
        """The reproduction of preset ``name`` (its default test subset) with ``values`` on top."""
        eval_limit = lookup(REPRODUCE_PRESETS, name, "reproduce preset")["eval_limit"]
        return cls.build(**{"preset": name, "eval_limit": eval_limit, **values})

    def encoder_config(self, objective: str) -> Any:
        """The ``AlignConfig`` of the ``align`` or ``classify`` encoder of this reproduction."""
        from facephi.train.config import AlignConfig

        preset = REPRODUCE_PRESETS[self.preset]
        options = dict(self.encoder_options)
        if objective == "align":
            for classify_only in ("class_weights", "logit_adjust"):
                options.pop(classify_only, None)
        if self.threads is not None:
            options["threads"] = self.threads
        return AlignConfig.for_preset(preset["encoder_preset"], data=self.data, out=str(Path(self.out) / "encoders" /
                                  objective), objective=objective, seed=self.seed, **options)

    def stage_config(self, stage: int) -> Any:
        """The ``TrainConfig`` of one LLM stage of this reproduction."""
        from facephi.train.config import TrainConfig

        preset = REPRODUCE_PRESETS[self.preset]
        changes = {**preset["stage_changes"], "seed": self.seed, **self.stage_options}
        if self.threads is not None:
            changes["threads"] = self.threads
        return TrainConfig.for_preset(preset["stage_preset"], stage, **changes)


@dataclass
class DemoConfig(Config):
    """Settings of ``facephi demo``; the miniature training run is used only when no model is given."""

    images: Path = setting(DEFAULT_IMAGES, help="folder of face photos (+ labels.csv)")
    model: Path | None = setting(None, help="FacePhi model folder (default: the shipped model, or $FACEPHI_MODEL)")
    train_from_scratch: bool = setting(False, help="train a miniature model on the photos first (extract, align, "
                                                   "stage 1, stage 2; a few minutes) and answer with it")
    work: Path = setting(Path("runs/demo"), help="folder of the miniature run")
    llm: str | None = setting(None, metavar="NAME_OR_PATH",
                              help=f"causal LM of the miniature run (default: the embedded {DEFAULT_LLM})")
    encoder_epochs: int = setting(20, min=1, max=1000, help="epochs of the miniature encoder alignment")
    stage_steps: int = setting(12, min=1, max=10000, help="optimizer steps of each LLM stage")
    batch_size: int = setting(10, min=2, cli=False, help="largest batch of the miniature run")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    seed: int = setting(0, help="seed of the miniature run")
