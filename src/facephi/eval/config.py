"""Settings of ``facephi eval`` (torch-free: the CLI builds its flags from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facephi.config import Config, setting
from facephi.data.templates import SCORE_TEMPLATES
from facephi.landmarks.store import SUBSET_POLICIES
from facephi.model.precision import PRECISIONS

INSTRUCTION_POLICIES = ("random", "first")
EVAL_MODES = ("generate", "score", "both")
MAX_NEW_TOKENS = 512
"""Upper bound of ``max_new_tokens`` everywhere: the paper's answers are about 20 tokens."""


@dataclass
class EvalConfig(Config):
    """What ``facephi eval`` scores, on which samples, and how it asks."""

    data: Path = setting(help="dataset folder written by `facephi extract`")
    out: Path = setting(help="output folder (metrics.json, predictions.jsonl, confusion.png, report.md)")
    model: Path | None = setting(None, help="FacePhi model or landmark encoder checkpoint folder "
                                            "(default: $FACEPHI_MODEL, else the shipped model)")
    split: str = setting("test", help="split to evaluate (train/valid/test, or another split name of the dataset)")
    batch_size: int = setting(16, min=1, max=4096, help="samples per batch")
    max_new_tokens: int = setting(32, min=1, max=MAX_NEW_TOKENS, help="answer length limit in tokens")
    limit: int | None = setting(None, min=1, unlimited=True, help="evaluate N samples of the split (see --limit-policy)")
    limit_policy: str = setting("random", choices=SUBSET_POLICIES,
                                help="how --limit draws its subset: random = seeded random; balanced = as even "
                                     "across classes as the data allows")
    instructions: str = setting("random", choices=INSTRUCTION_POLICIES,
                                help="instruction per sample: a seeded random Table-2 template, or always the first")
    instruction: str | None = setting(None, help="ask this fixed instruction instead")
    seed: int = setting(0, help="seed of the instruction draw and of --limit")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    device: str = setting("auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    precision: str = setting("float32", choices=PRECISIONS,
                             help="what a FacePhi model's LLM computes in (float32: the figures the README "
                                  "reports; auto: bfloat16 where the hardware has it, as predict and serve)")
    mode: str = setting("generate", choices=EVAL_MODES,
                        help="generate = greedy answers scored by keyword matching (the paper's metric); score = "
                             "class probabilities from the likelihood of each class's answer (argmax class, "
                             "calibration: ECE, NLL, reliability.png); both = the two, plus their agreement rate")
    score_templates: str = setting("first", choices=SCORE_TEMPLATES,
                                   help="class scoring: likelihood of the first answer template, or the mean "
                                        "likelihood over all 10 templates (the prompt still runs once; 10x the answers)")
    prior_correction: bool = setting(False, help="also report class scoring with the class prior divided out "
                                                 "(logit adjustment; the prior read from --prior-from)")
    prior_from: Path | None = setting(None, help="a finished `facephi eval --mode score` (or both) folder on the "
                                                 "valid split: its mean predicted probability per class is the prior")

    def check(self) -> None:
        if self.prior_correction and self.mode == "generate":
            raise self.error("prior_correction", "applies to class scoring: use --mode score or both")
        if self.prior_correction and self.prior_from is None:
            raise self.error("prior_correction", "needs --prior-from DIR (an `eval --mode score` folder on valid)")
        if self.prior_from is not None and not self.prior_correction:
            raise self.error("prior_from", "is used by --prior-correction only")
