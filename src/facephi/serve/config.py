"""Settings of ``facephi predict`` and ``facephi serve`` (torch- and FastAPI-free: the CLI builds its flags
from these fields)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facephi.config import Config, setting
from facephi.eval.config import ANSWER_PRIOR_HELP, ENCODER_WEIGHT_HELP, MAX_NEW_TOKENS
from facephi.model.precision import PRECISIONS
from facephi.utils.errors import FacePhiError

IMAGE_SIDES = (1.0, 100_000.0)
"""The accepted range of each side of an ``image_size`` given with raw landmarks, in pixels (the default,
a square of side 1, means "x and y are fractions of a square")."""


def check_image_size(size: object, what: str = "image_size") -> tuple[float, float]:
    """``size`` as ``(width, height)`` floats; a one-line :class:`FacePhiError` naming ``what`` unless it is
    two numbers within :data:`IMAGE_SIDES`."""
    try:
        width, height = (float(side) for side in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise FacePhiError(f"{what} must be two numbers [width, height], got {size!r}") from None
    low, high = IMAGE_SIDES
    if not (low <= width <= high and low <= height <= high):
        raise FacePhiError(f"{what} must be two sides between {low:g} and {high:g} pixels, got {width:g} x {height:g}")
    return width, height


@dataclass
class PredictConfig(Config):
    """Inputs of ``facephi predict`` and how they are answered."""

    inputs: list[Path] = setting(positional=True, nargs="+", metavar="INPUT",
                                 help="image, folder of images (recursive), .npy landmarks [478,3] / [N,478,3], "
                                      "a `facephi extract` folder, or a video (.mp4 .avi .mov .mkv .webm)")
    model: Path | None = setting(None, help="FacePhi model or landmark encoder checkpoint folder (default: "
                                            "$FACEPHI_MODEL, else the shipped facephi-smollm2-ferplus)")
    instruction: str | None = setting(None, help="question asked (default: the paper's first instruction)")
    image_size: list[float] | None = setting(None, nargs=2, min=IMAGE_SIDES[0], max=IMAGE_SIDES[1],
                                             metavar=("W", "H"),
                                             help="image size of .npy landmarks in pixels, each side 1 to 100000 "
                                                  "(default: a square image)")
    max_new_tokens: int = setting(32, min=1, max=MAX_NEW_TOKENS, help="answer length limit in tokens")
    batch_size: int = setting(16, min=1, max=4096, help="inputs per batch")
    json: bool = setting(False, help="one JSON object per face on stdout (videos: per sampled frame, then "
                                     "one object with the per-second series)")
    all_faces: bool = setting(False, help="answer every face of an image or frame, not only the largest")
    fps: float = setting(2.0, above=0, max=240, help="video frames answered per second of video")
    plot_dir: Path | None = setting(None, help="write a PNG of each video's class probabilities over time "
                                               "here, as <video name>.png (default: no plot)")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    device: str = setting("auto", help="cpu, cuda, ... (auto: cuda when available)")
    precision: str = setting("float32", choices=PRECISIONS,
                             help="what the LLM computes in: float32 (the reported figures); bfloat16 (faster "
                                  "scoring on CPUs with native bfloat16, slightly different numbers); auto = "
                                  "bfloat16 where the CPU or GPU has native bfloat16 arithmetic, else float32")
    answer_prior_tau: float | None = setting(None, min=0, max=10, metavar="TAU", help=ANSWER_PRIOR_HELP)
    encoder_weight: float | None = setting(None, min=0, max=10, metavar="WEIGHT", help=ENCODER_WEIGHT_HELP)


@dataclass
class ServeConfig(Config):
    """Where ``facephi serve`` listens, which model answers, and the limits of one request."""

    host: str = setting("127.0.0.1", help="address to listen on (127.0.0.1: this machine only; "
                                          "0.0.0.0: every network interface, without any authentication)")
    port: int = setting(8000, min=0, max=65535, help="TCP port (0: any free port, printed at start)")
    model: Path | None = setting(None, help="FacePhi model or landmark encoder folder "
                                            "(default: $FACEPHI_MODEL, else the shipped model)")
    max_upload_mb: float = setting(5.0, above=0, max=1024, help="largest accepted request body in MB "
                                                                "(larger uploads get 413, checked while receiving)")
    timeout_s: float = setting(30.0, above=0, max=3600, help="longest wait for the model per request, queue "
                                                             "included, in seconds (then 504)")
    threads: int | None = setting(None, min=1, help="torch CPU threads (default: torch's)")
    device: str = setting("auto", help="cpu, cuda, ... (auto: cuda when available)")
    precision: str = setting("float32", choices=PRECISIONS,
                             help="what the LLM computes in: float32 (the reported figures); bfloat16 (faster "
                                  "scoring on CPUs with native bfloat16, slightly different numbers); auto = "
                                  "bfloat16 where the CPU or GPU has native bfloat16 arithmetic, else float32")
    max_new_tokens: int = setting(32, min=1, max=MAX_NEW_TOKENS, help="answer length limit in tokens")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
