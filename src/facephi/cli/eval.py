"""`facephi eval`: score a FacePhi model (keyword matching) or a landmark encoder on a dataset split."""

from __future__ import annotations

import argparse
from typing import Any

from facephi.cli import add_progress_flag, refuse_answer_options
from facephi.config import add_arguments, from_args
from facephi.eval.config import EvalConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a FacePhi model or landmark encoder on an extracted dataset",
        description="Greedy answers of a FacePhi model scored by the paper's keyword matching (or the "
                    "classifier of a landmark encoder checkpoint): accuracy, balanced accuracy, macro-F1, "
                    "per-class recall, keyword-miss rate. Writes metrics.json, predictions.jsonl, "
                    "confusion.png and report.md to --out; an interrupted run resumes. --mode score ranks the "
                    "8 class answers by likelihood instead (class probabilities, calibration, reliability.png); "
                    "--mode both does the two. A dataset made only for evaluation (a folder of class folders, "
                    "extracted) is evaluated whole (--split all, the default there); its photos without a face "
                    "count as wrong answers in the figures of all photos. --prior divides a class prior out of "
                    "the class scores.",
    )
    add_arguments(p, EvalConfig)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from facephi.eval.evaluate import evaluate_encoder, evaluate_model
    from facephi.eval.report import interval_text, no_face_summary, scoring_summary, summary_lines
    from facephi.eval.results import resolve_prior
    from facephi.landmarks.store import LandmarkSet
    from facephi.model.checkpoints import ENCODER, check_model_dir
    from facephi.model.precision import resolve_device
    from facephi.utils.errors import FacePhiError
    from facephi.utils.io import check_writable_dir

    from facephi.model.defaults import default_model

    config = from_args(EvalConfig, args)
    if config.model is None:
        config = config.replace(model=default_model())
    kind = check_model_dir(config.model, "--model")  # complete, before anything is loaded
    if kind == ENCODER and config.prior != "uniform":
        raise FacePhiError(f"--prior {config.prior}: applies to a FacePhi model's class scoring, "
                           f"{config.model} is a landmark encoder")
    refuse_answer_options(config.model, config.answer_prior_tau, config.encoder_weight, kind)
    if not config.data.exists():
        raise FacePhiError(f"{config.data}: not found (--data)")
    data = LandmarkSet.load(config.data)
    if config.split == "auto":
        config = config.replace(split=data.default_eval_split())
    data.select(config.split)  # the split exists and has labelled samples
    prior_data = _prior_data(config, data) if config.prior == "train" else None
    resolve_prior(config.prior, config.score_templates, prior_data)  # a bad --prior fails before the model loads
    check_writable_dir(config.out, "--out")
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    common = dict(seed=config.seed, limit=config.limit, limit_policy=config.limit_policy, out_dir=config.out,
                  overwrite=config.overwrite,
                  progress=args.progress, settings={"model": str(config.model), "data": str(config.data)})
    if kind == ENCODER:
        from facephi.model.encoder import LandmarkEncoder

        encoder = LandmarkEncoder.from_pretrained(config.model).to(device)
        result = evaluate_encoder(encoder, data, config.split, batch_size=config.batch_size, **common)
    else:
        from facephi.model.facephi import FacePhiModel

        model = FacePhiModel.from_pretrained(config.model).to(device)
        common["settings"]["precision"] = model.set_precision(config.precision)
        if config.answer_prior_tau is not None:
            model.answer_prior.set_tau(config.answer_prior_tau)
        if config.encoder_weight is not None:
            model.answer_prior.set_encoder_weight(config.encoder_weight)
        result = evaluate_model(model, data, config.split, batch_size=config.batch_size,
                                max_new_tokens=config.max_new_tokens, instruction_policy=config.instructions,
                                instruction=config.instruction, mode=config.mode,
                                score_templates=config.score_templates, prior=config.prior,
                                prior_tau=config.prior_tau, prior_data=prior_data, **common)
    width = max(len(label) for label, _ in summary_lines(result.metrics))
    print(f"{kind} {config.model} on {config.data} [{config.split}] in {result.seconds:.0f} s")
    for label, value in summary_lines(result.metrics):
        print(f"  {label:<{width}}  {value}")
    prior = result.extra.get("prior", {})
    corrected = f"Class scoring, {prior.get('name')} prior divided out (tau {prior.get('tau')})"
    for key, label in (("score", "Class scoring"), ("score_prior_corrected", corrected)):
        if key in result.extra:
            print(f"  {label}: {scoring_summary(result.extra[key])}")
    no_face = result.extra.get("no_face")
    if no_face and no_face["n"]:
        print(f"  Photos without a face: {no_face_summary(no_face)}")
    if "all_photos" in result.extra:
        for block, label in ((None, "answers" if kind != ENCODER else "classifier"), ("score", "class scoring"),
                             ("score_prior_corrected", "class scoring, prior divided out")):
            if block is None or block in result.extra["all_photos"]:
                whole = result.whole_set(block)
                print(f"  All {whole.n} photos, {label}: accuracy {100 * whole.accuracy:.1f} %"
                      f"{interval_text(whole.intervals, 'accuracy')}, macro recall "
                      f"{100 * whole.balanced_accuracy:.1f} %{interval_text(whole.intervals, 'balanced_accuracy')}")
    if "agreement" in result.extra:
        print(f"  Agreement (generated vs scored class): {100 * result.extra['agreement']:.1f} %")
    pngs = ", reliability.png" if "score" in result.extra else ""
    print(f"  -> {config.out}/report.md, metrics.json, predictions.jsonl, confusion.png{pngs}")
    return 0


def _prior_data(config: EvalConfig, data: Any) -> Any:
    """The dataset of ``--prior train``: ``--prior-data``, else ``--data`` where its train split is
    not (part of) the evaluated one."""
    from facephi.landmarks.store import LandmarkSet
    from facephi.utils.errors import FacePhiError

    if config.prior_data is None:
        if config.split in ("all", "train") or len(data.standard_splits()["train"]) == 0:
            raise FacePhiError(f"--prior train: {config.data} has no train split apart from the evaluated "
                               f"{config.split!r}; name the model's training data with --prior-data DIR")
        return data
    if not config.prior_data.exists():
        raise FacePhiError(f"{config.prior_data}: not found (--prior-data)")
    prior_data = LandmarkSet.load(config.prior_data, check_faces=False)
    prior_data.select("train")  # has a labelled train split
    return prior_data
