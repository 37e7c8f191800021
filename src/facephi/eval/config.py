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
ANSWER_PRIOR_HELP = ("the class prior of the model's training data (its config.json answer_prior) divided out of "
                     "the answers and class probabilities at this strength: argmax log p - TAU * log prior (0: the "
                     "LLM's own answers; default: the model's answer_prior_tau)")
ENCODER_WEIGHT_HELP = ("the landmark encoder's own class log-probabilities, times this weight, added to the answers' "
                       "class words and the class scores (an ensemble of the LLM and its encoder's classifier; 0: "
                       "the LLM alone; default: the model's encoder_weight)")


@dataclass
class EvalConfig(Config):
    """What ``facephi eval`` scores, on which samples, and how it asks."""

    data: Path = setting(help="dataset folder written by `facephi extract`")
    out: Path = setting(help="output folder (metrics.json, predictions.jsonl, confusion.png, report.md)")
    model: Path | None = setting(None, help="FacePhi model or landmark encoder checkpoint folder "
                                            "(default: $FACEPHI_MODEL, else the shipped model)")
    split: str = setting("auto", help="split to evaluate: train/valid/test, all (every photo: a dataset made for "
                                      "evaluation only), or another split name of the dataset; auto = all for a "
                                      "dataset without splits (a folder of class folders), else test")
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
    prior: str = setting("uniform", metavar="uniform|train|FILE",
                         help="class scoring: the class prior divided out of the 8 class probabilities (logit "
                              "adjustment, p / prior^tau renormalised), reported beside the plain scores and "
                              "recorded in metrics.json. uniform = none (the model's own scores); train = the class "
                              "frequencies of the train split of --prior-data; FILE = a JSON file (8 numbers in "
                              "class order, or {class: number}) or a finished `facephi eval --mode score --split "
                              "valid` folder (its mean predicted probability per class)")
    prior_data: Path | None = setting(None, help="--prior train: the dataset folder (`facephi extract` output) whose "
                                                 "train split gives the class frequencies (the model's training data; "
                                                 "default: --data, when it has a train split apart from the one evaluated)")
    prior_tau: float = setting(1.0, min=0, max=10, help="strength of the prior correction: p / prior^tau (1 divides "
                                                        "the prior out entirely, 0 changes nothing)")

    answer_prior_tau: float | None = setting(None, min=0, max=10, metavar="TAU", help=ANSWER_PRIOR_HELP)
    encoder_weight: float | None = setting(None, min=0, max=10, metavar="WEIGHT", help=ENCODER_WEIGHT_HELP)

    overwrite: bool = setting(False, help="replace a finished evaluation in --out made with other settings "
                                          "(one with the same settings and the same model and data content is "
                                          "reused as it is)")

    def check(self) -> None:
        if self.prior != "uniform" and self.mode == "generate":
            raise self.error("prior", "applies to class scoring: use --mode score or both")
        if self.prior_data is not None and self.prior != "train":
            raise self.error("prior_data", "is used by --prior train only")
        if not self.prior:
            raise self.error("prior", "is empty: uniform, train or a file")
