"""The ``facephi`` command line: one entry point, one sub-command per pipeline step."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from facephi import __version__
from facephi.utils.errors import EMPTY_PATH, FacePhiError

# Each name is a module ``facephi.cli.<name>`` exposing ``register(subparsers)``; the parser it
# adds sets ``func`` to a callable taking the parsed namespace and returning an exit code.
# Command modules import heavy libraries (torch, mediapipe) inside their ``run`` so that
# ``facephi --help`` stays fast.
COMMANDS: tuple[str, ...] = ("extract", "align", "train", "eval", "predict", "reproduce", "demo", "serve")


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar or progress lines (shared by every long command)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar on a terminal, else a progress line every 30 s (default: on)")


def refuse_answer_options(model: Path, answer_prior_tau: float | None, encoder_weight: float | None,
                          kind: str | None = None) -> None:
    """Before anything loads: ``--answer-prior-tau`` / ``--encoder-weight`` given with a landmark
    encoder ``model`` (they shape a FacePhi model's answers) is a one-line FacePhiError naming the flag.
    ``kind``: the model's ``check_model_dir`` kind when the caller has it (else checked here if needed)."""
    from facephi.model.checkpoints import ENCODER, check_model_dir

    given = [flag for flag, value in (("--answer-prior-tau", answer_prior_tau), ("--encoder-weight", encoder_weight))
             if value is not None]
    if given and (kind or check_model_dir(model, "--model")) == ENCODER:
        raise FacePhiError(f"{given[0]}: applies to a FacePhi model's answers, {model} is a landmark encoder")


def _quiet_model_loading() -> None:
    """No Hugging Face progress bars ("Loading weights", "Writing model shards"): the commands say what they do."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (tests, or a caller of main())
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def non_empty_path(text: str) -> Path:
    """A path argument; an empty one (an unset shell variable) is refused instead of meaning "."."""
    if not text:
        raise argparse.ArgumentTypeError(EMPTY_PATH)
    return Path(text)


def _refuse_empty_paths(parser: argparse.ArgumentParser) -> None:
    """Give every path argument of ``parser`` and its sub-commands :func:`non_empty_path`."""
    for action in parser._actions:
        if action.type is Path:
            action.type = non_empty_path
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _refuse_empty_paths(sub)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``facephi CMD: error: ...`` and where to read the
    usage, instead of the usage block first (sub-command parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="facephi",
        description="Emotion recognition from facial landmarks with a lightweight multimodal LLM.",
    )
    parser.add_argument("--version", action="version", version=f"facephi {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"facephi.cli.{name}").register(sub)
    _refuse_empty_paths(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_model_loading()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except FacePhiError as exc:
        print(f"facephi {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file system problem (permissions, disk full, ...) is the user's to fix
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"facephi {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facephi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
