"""`facephi predict`: answers and classes for images, folders, landmark files, extracted datasets
and videos, through the Python API (:class:`facephi.serve.api.FacePhi`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from facephi.cli import refuse_answer_options
from facephi.config import add_arguments, from_args
from facephi.serve.config import PredictConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict the emotion of images, videos or landmark files",
        description="Each INPUT is an image (MediaPipe landmarks are extracted; the image itself never "
                    "reaches the model), a folder of images (recursive), a .npy file of raw MediaPipe "
                    "landmarks [478, 3] or [N, 478, 3], a folder written by `facephi extract`, or a video "
                    "(.mp4 .avi .mov .mkv .webm: --fps frames per second are answered, then the mean class "
                    "probabilities of each second; --plot-dir draws them). Prints the answer and the class "
                    "of the largest face (--all-faces: of every face); inputs without a usable face are "
                    "reported one by one on stderr (exit status 1 when nothing could be answered).",
    )
    add_arguments(p, PredictConfig)
    p.set_defaults(func=run)


def format_prediction(row: dict[str, Any], top: int = 3) -> str:
    """Human-readable lines of one answered face (a dict of ``FacePhi.predict``)."""
    where = []
    if row.get("time_s") is not None:
        where.append(f"at {row['time_s']:.2f} s (frame {row['frame']})")
    if row.get("faces", 1) > 1:
        where.append(f"face {row['face'] + 1} of {row['faces']}")
    if row.get("box") is not None and (row.get("faces", 1) > 1 or row.get("time_s") is not None):
        where.append("box [" + ", ".join(f"{v:.0f}" for v in row["box"]) + "]")
    lines = [row["input"] + (f"  ({', '.join(where)})" if where else "")]
    if row.get("answer") is not None:
        lines.append(f"  answer:  {row['answer']}")
    lines.append(f"  class:   {row.get('predicted_class') or '(no class named)'}"
                 + (f"   (label: {row['label']})" if row.get("label") else ""))
    if row.get("scores"):
        best = sorted(row["scores"].items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"  {row.get('scores_from') or 'scores'}: " + ", ".join(f"{name} {100 * p:.1f} %" for name, p in best))
    return "\n".join(lines)


def _runs(inputs: list[Path]) -> Iterator[tuple[bool, list[Path]]]:
    """Consecutive inputs grouped into (is a video file, paths): videos one by one, the rest together."""
    from facephi.serve.inputs import is_video

    group: list[Path] = []
    for path in inputs:
        if is_video(path) and _is_file(path):
            if group:
                yield False, group
                group = []
            yield True, [path]
        else:
            group.append(path)
    if group:
        yield False, group


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; one that cannot be looked at is left to the input reader to report."""
    try:
        return path.is_file()
    except OSError:
        return False


def _plot_path(plot_dir: Path, video: Path, used: set[Path]) -> Path:
    path, n = plot_dir / f"{video.stem}.png", 1
    while path in used:
        n += 1
        path = plot_dir / f"{video.stem}-{n}.png"
    used.add(path)
    return path


def run(args: argparse.Namespace) -> int:
    from facephi.model.precision import resolve_device
    from facephi.serve.api import FacePhi, model_path
    from facephi.serve.inputs import check_image_size, check_instruction

    config = from_args(PredictConfig, args)
    refuse_answer_options(model_path(config.model), config.answer_prior_tau, config.encoder_weight)
    check_instruction(config.instruction, "--instruction")
    if config.image_size is not None:
        check_image_size(config.image_size, "--image-size")
    device = resolve_device(config.device)
    if config.plot_dir is not None:
        from facephi.utils.io import check_writable_dir

        check_writable_dir(config.plot_dir, "--plot-dir")
    model = FacePhi.from_pretrained(config.model, device=device, threads=config.threads,
                                    instruction=config.instruction, max_new_tokens=config.max_new_tokens,
                                    batch_size=config.batch_size, precision=config.precision, flag="--model",
                                    answer_prior_tau=config.answer_prior_tau, encoder_weight=config.encoder_weight)

    def emit(row: dict[str, Any]) -> None:
        if config.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        elif "error" not in row:
            print(format_prediction(row), flush=True)

    answered = inputs = failed = 0
    plots: set[Path] = set()
    try:
        for video, paths in _runs(list(config.inputs)):
            if not video:
                for row in model.iter_predict(paths, all_faces=config.all_faces, image_size=config.image_size,
                                              fps=config.fps):
                    emit(row)
                    inputs += 1
                    if "error" in row:
                        failed += 1
                        print(f"facephi predict: {row['input']}: {row['error']}", file=sys.stderr)
                    else:
                        answered += 1
                continue
            result = model.predict_video(paths[0], fps=config.fps, all_faces=config.all_faces)
            for row in result.frames:
                emit(row)
            inputs += 1
            answered += sum("error" not in row for row in result.frames)
            whole = [row for row in result.frames if "error" in row and row.get("frame") is None]
            for row in whole:
                print(f"facephi predict: {row['input']}: {row['error']}", file=sys.stderr)
            faceless = result.sampled - result.answered
            if faceless:
                print(f"facephi predict: {result.input}: no usable face in {faceless} of {result.sampled} "
                      "sampled frames", file=sys.stderr)
            if not result.answered:
                failed += 1
            summary = result.summary()
            if config.plot_dir is not None and result.sampled:
                summary["plot"] = str(result.plot(_plot_path(config.plot_dir, paths[0], plots)))
            if config.json:
                print(json.dumps(summary, ensure_ascii=False), flush=True)
            else:
                print(f"{result.input}: {result.answered} of {result.sampled} sampled frames answered; per second:")
                for second in result.per_second:
                    best = second["predicted_class"]
                    print(f"  {second['second']:>4d} s  {best:<9} {100 * second['scores'][best]:.1f} %"
                          f"  ({second['frames']} frames)")
                if "plot" in summary:
                    print(f"  plot: {summary['plot']}")
    finally:
        model.close()
    if failed:
        print(f"facephi predict: {failed} of {inputs} inputs failed", file=sys.stderr)
    return 0 if answered else 1
