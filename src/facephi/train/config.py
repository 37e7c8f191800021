"""Settings of the training commands: ``facephi align`` (:class:`AlignConfig`) and ``facephi train``
(:class:`TrainConfig`, the hyper-parameters of one LLM stage, and :class:`TrainCommand`, what the
stage starts from and where it goes). Torch-free: the CLI builds its flags from these fields.

Subsets: every ``limit_*`` keeps that many samples of a split, drawn as ``limit_policy`` says
(``random``: a seeded random subset; ``balanced``: as even across classes as the data allows, a
class smaller than its share kept whole); ``all`` keeps every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facephi.config import Config, setting
from facephi.landmarks.augment import AUGMENTATIONS
from facephi.landmarks.store import SUBSET_POLICIES
from facephi.model.defaults import DEFAULT_LLM, DEFAULT_TEXT_TOWER
from facephi.presets import ENCODERS, OBJECTIVES, STAGE_PRESETS
LR_SCHEDULES = ("constant", "cosine", "linear")
"""Learning-rate schedules of both training commands: after ``warmup_ratio`` of the steps with a
linear warm-up, constant, cosine decay to 0 or linear decay to 0 (``transformers.get_scheduler``, see
:func:`facephi.train.loop.build_scheduler`)."""
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
SELECT_METRICS = ("accuracy", "balanced_accuracy", "probe_accuracy", "probe_balanced_accuracy")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
ANSWER_LABELS = ("plurality", "votes")
"""Which class a training answer names: the face's label (the plurality of its votes), or a class
drawn from its crowd votes (FER+), a new draw per face and epoch: in expectation the loss is the
vote-weighted mean of the classes' answer losses, i.e. the votes as soft targets."""


@dataclass
class AlignConfig(Config):
    """Settings of ``facephi align``; the defaults are the paper's (AdamW, lr 2e-5, 20 epochs, batch 64)."""

    data: str = setting(help="landmark set folder (facephi extract output)")
    out: str = setting(help="encoder checkpoint folder to write")
    objective: str = setting("align", choices=OBJECTIVES,
                             help="align: CLIP loss against class captions (paper 3.3); classify: cross-entropy "
                                  "(the paper's ablation encoder)")
    encoder: str = setting("pointmlp", choices=ENCODERS, help="encoder architecture preset")
    encoder_options: dict[str, Any] = setting(default_factory=dict, flag="--encoder-option", metavar="KEY=VALUE",
                                              help="override a field of the encoder's backbone config, JSON value "
                                                   "(e.g. k_neighbors=[16,16,16,16]); repeatable")
    epochs: int = setting(20, min=1, help="passes over the training split")
    batch_size: int = setting(64, min=2, help="samples per step")
    lr: float = setting(2e-5, above=0, help="peak learning rate (AdamW)")
    weight_decay: float = setting(0.01, min=0, help="AdamW weight decay (matrices only)")
    lr_schedule: str = setting("constant", choices=LR_SCHEDULES, help="learning-rate schedule after warm-up")
    warmup_ratio: float = setting(0.0, min=0, max=0.5, help="fraction of the steps with linear warm-up")
    class_weights: str = setting("none", choices=CLASS_WEIGHTS,
                                 help="cross-entropy class weights (classify only): balanced = inverse class "
                                      "frequency, sqrt = its square root")
    logit_adjust: float = setting(0.0, min=0, metavar="TAU",
                                  help="classify only: logit-adjusted cross-entropy (Menon et al. 2021), "
                                       "CE(logits + TAU * log prior) with the class prior of the training subset; "
                                       "0 = plain cross-entropy")
    limit_train: int | None = setting(None, min=1, unlimited=True, help="training samples (see --limit-policy)")
    limit_valid: int | None = setting(None, min=1, unlimited=True, help="validation samples (see --limit-policy)")
    limit_test: int | None = setting(None, min=1, unlimited=True, help="test samples (see --limit-policy)")
    limit_policy: str = setting("random", choices=SUBSET_POLICIES,
                                help="how --limit-* subsets are drawn: random = a seeded random subset of each "
                                     "split; balanced = as even across classes as the data allows")
    probe_samples: int = setting(5000, min=2, help="training samples of the per-epoch linear probe")
    augment: str = setting("full", choices=AUGMENTATIONS,
                           help="training augmentation: full = mirror, rotation, scale, jitter; mirror = the "
                                "mirror only; none")
    seed: int = setting(0, help="seed of initialisation, data order, augmentation and subsets")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    text_tower: str = setting(DEFAULT_TEXT_TOWER, metavar="NAME_OR_PATH",
                              help="frozen text encoder of --objective align")
    select_metric: str = setting("accuracy", choices=SELECT_METRICS, help="Valid metric that picks the best epoch")
    eval_batch_size: int = setting(256, min=1, help="samples per evaluation batch")
    resume: bool = setting(False, help="continue the run in --out from its last checkpoint (OUT/checkpoints)")
    overwrite: bool = setting(False, help="replace a checkpoint already in --out")

    def check(self) -> None:
        if self.class_weights != "none" and self.objective != "classify":
            raise self.error("class_weights", f"{self.class_weights} applies to --objective classify only")
        if self.logit_adjust and self.objective != "classify":
            raise self.error("logit_adjust", "applies to --objective classify only")
        if self.limit_train is not None and self.limit_train < self.batch_size:
            raise self.error("limit_train", f"must be >= batch_size ({self.batch_size}), got {self.limit_train}")
        if self.resume and self.overwrite:
            raise self.error("resume", "--resume and --overwrite exclude each other")

    @classmethod
    def for_preset(cls, name: str, **values: Any) -> "AlignConfig":
        """The encoder preset ``name`` of :data:`facephi.presets.ENCODER_PRESETS` with ``values`` on top."""
        from facephi.presets import ENCODER_PRESETS, lookup

        base = dict(lookup(ENCODER_PRESETS, name, "encoder preset"))
        options = {**base.pop("encoder_options", {}), **values.pop("encoder_options", {})}
        return cls.build(**{**base, **values, "encoder_options": options})


@dataclass
class TrainConfig(Config):
    """Hyper-parameters of one LLM training stage (``facephi train``).

    ``batch_size`` is the *effective* batch of one optimizer step, summed over all processes;
    each step is split into ``grad_accum`` micro-batches per process. The paper gives batch
    sizes, learning rates, AdamW and epochs only; warm-up (3 %), cosine decay, no weight decay
    and clipping at norm 1 follow LLaVA's recipe, which the paper cites for its two stages.
    """

    stage: int = setting(1, choices=(1, 2), cli=False, help="1: projector only; 2: projector + LLM")
    batch_size: int = setting(48, min=1, help="samples per optimizer step, all processes together")
    grad_accum: int = setting(1, min=1, help="micro-batches per optimizer step (memory)")
    lr: float = setting(2.5e-3, above=0, help="peak learning rate (AdamW)")
    epochs: int = setting(3, min=1, help="passes over the training subset")
    weight_decay: float = setting(0.0, min=0, help="AdamW weight decay (matrices only)")
    warmup_ratio: float = setting(0.03, min=0, max=0.5, help="fraction of the steps with linear warm-up")
    lr_schedule: str = setting("cosine", choices=LR_SCHEDULES, help="learning-rate schedule after warm-up")
    max_grad_norm: float | None = setting(1.0, above=0, unlimited=True, help="gradient clipping norm ('all': none)")
    limit_train: int | None = setting(None, min=1, unlimited=True, help="training samples (see --limit-policy)")
    limit_valid: int | None = setting(512, min=1, unlimited=True,
                                      help="valid samples on which the loss is reported (see --limit-policy)")
    limit_policy: str = setting("balanced", choices=SUBSET_POLICIES,
                                help="how --limit-* subsets are drawn: random = a seeded random subset; "
                                     "balanced = as even across classes as the data allows")
    max_steps: int | None = setting(None, min=1, unlimited=True,
                                    help="cap on the optimizer steps (the schedule is built for the capped length)")
    save_every: int | None = setting(200, min=1, unlimited=True,
                                     help="optimizer steps between checkpoints ('all': only at the end)")
    keep_checkpoints: int = setting(1, min=1, help="checkpoints kept")
    log_every: int = setting(10, min=1, help="optimizer steps between loss log entries")
    seed: int = setting(0, help="seed of data order, templates and initialisation")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    mixed_precision: str = setting("auto", choices=MIXED_PRECISION,
                                   help="auto = bf16 on a GPU that supports it, else fp16 on GPU, no on CPU")
    lora: bool = setting(False, help="stage 2: train a LoRA adapter instead of the full LLM")
    fast_path: bool = setting(True, help="the same loss with less work: the shared prompt prefix run once "
                                         "(stage 1: once per run) and reused from its key/value cache, fused "
                                         "AdamW; --no-fast-path: the plain loop (for comparison)")
    lora_r: int = setting(16, min=1, help="LoRA rank")
    lora_alpha: int = setting(32, min=1, help="LoRA alpha")
    lora_dropout: float = setting(0.05, min=0, max=0.9, help="LoRA dropout")
    landmark_tokens: int = setting(1, min=1, max=64,
                                   help="stage 1: landmark token embeddings per face from the new projector "
                                        "(the paper: 1; stage 2 keeps its --init model's)")
    train_encoder: bool = setting(False, help="stage 2: also fine-tune the landmark encoder's weights (an "
                                              "ablation; its BatchNorm statistics stay as aligned)")
    class_weights: str = setting("none", choices=CLASS_WEIGHTS,
                                 help="weight of each answer's loss by the class it names: balanced = inverse "
                                      "class frequency in the training subset, sqrt = its square root (the valid "
                                      "loss stays unweighted)")
    answer_labels: str = setting("plurality", choices=ANSWER_LABELS,
                                 help="class named by each training answer: plurality = the face's label; votes = "
                                      "drawn from its crowd votes per epoch (soft targets; FER+ data only)")

    def check(self) -> None:
        if self.lora and self.stage != 2:
            raise self.error("lora", "LoRA applies to stage 2 only (stage 1 trains the projector)")
        if self.landmark_tokens != 1 and self.stage != 1:
            raise self.error("landmark_tokens", "is set in stage 1 (stage 2 keeps its --init model's)")
        if self.train_encoder and self.stage != 2:
            raise self.error("train_encoder", "applies to stage 2 only (stage 1 trains the projector)")
        if self.batch_size % self.grad_accum:
            raise self.error("batch_size", f"{self.batch_size} is not divisible by grad_accum {self.grad_accum}")

    @classmethod
    def for_preset(cls, name: str, stage: int, **values: Any) -> "TrainConfig":
        """The stage preset ``name`` of :data:`facephi.presets.STAGE_PRESETS` with ``values`` on top."""
        from facephi.presets import STAGE_PRESETS, lookup

        return cls.build(**{**lookup(STAGE_PRESETS, name, "stage preset")[stage], "stage": stage, **values})


@dataclass
class TrainCommand(Config):
    """What one ``facephi train`` invocation starts from and writes (its hyper-parameters: :class:`TrainConfig`)."""

    stage: int = setting(choices=(1, 2), help="1: the projector (LLM and encoder frozen); 2: also the LLM")
    data: str = setting(help="extracted landmark set (facephi extract)")
    out: str = setting(help="run directory to create (or continue with --resume)")
    encoder: str | None = setting(None, help="stage 1: landmark encoder checkpoint (facephi align)")
    init: str | None = setting(None, help="stage 2: FacePhi model to start from, e.g. RUN1/final")
    llm: str | None = setting(None, metavar="NAME_OR_PATH",
                              help=f"stage 1: causal LM, by name or local path (default: the embedded {DEFAULT_LLM})")
    gguf_file: str | None = setting(None, help="stage 1: GGUF file name inside --llm")
    max_length: int | None = setting(None, min=16, max=4096,
                                     help="token length of the training sequences, stored in the model's config "
                                          "(stage 1 default: 128; stage 2 default: the --init model's)")
    preset: str | None = setting(None, choices=tuple(STAGE_PRESETS),
                                 help="starting hyper-parameters (default: paper with a GPU, cpu without)")
    resume: bool = setting(False, help="continue the run in --out from its last checkpoint")
    stop_after: int | None = setting(None, min=1, metavar="N",
                                     help="stop after N optimizer steps of this invocation (checkpointed; "
                                          "continue with --resume)")

    def check(self) -> None:
        if self.stage == 1 and (self.encoder is None or self.init is not None):
            raise self.error("encoder", "stage 1 starts from a landmark encoder: pass --encoder (and no --init)")
        if self.stage == 2 and (self.init is None or self.encoder is not None):
            raise self.error("init", "stage 2 starts from a stage-1 model: pass --init RUN1/final (and no --encoder)")
        if self.stage == 2 and (self.llm is not None or self.gguf_file is not None):
            raise self.error("llm", "stage 2 uses the LLM of its --init model; --llm / --gguf-file apply to stage 1")
