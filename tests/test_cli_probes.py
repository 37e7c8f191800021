"""Bad-input probes through the command line (`facephi.cli.main`).

Each probe feeds one command one bad input and expects what a user should get: exit status 2
(user error; != 0 at least), ONE line on stderr, ``facephi CMD: error: ...``, naming the flag or
the file (and the line / sample) and the problem, no traceback, nothing lost, and - where the
probe says so - the refusal before any expensive work (no encoder built, no LLM loaded, no
epoch run, no image meshed). Tiny random models and small synthetic data keep it fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from facephi.cli import main
from facephi.labels import CLASSES
from train_fixtures import MAX_LENGTH, write_encoder, write_landmark_set, write_llm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
SPLITS = {"train": 16, "valid": 8, "test": 8}
BAD_SAMPLE = 5  # the sample given a NaN landmark (samples.csv line 7)

TINY_ENCODER_FLAGS = ["--objective", "classify", "--encoder", "pointmlp-elite", "--augment", "none",
                      "--encoder-option", "embed_dim=8", "--encoder-option", "dim_expansion=[2]",
                      "--encoder-option", "pre_blocks=[1]", "--encoder-option", "pos_blocks=[1]",
                      "--encoder-option", "k_neighbors=[4]", "--encoder-option", "reducers=[4]",
                      "--encoder-option", "feature_dim=16", "--encoder-option", "head_hidden_dim=16",
                      "--epochs", "1", "--batch-size", "8", "--probe-samples", "8", "--threads", "1",
                      "--no-progress"]
STAGE_FLAGS = ["--batch-size", "4", "--max-steps", "1", "--threads", "1", "--limit-train", "8", "--limit-valid", "4",
               "--save-every", "all", "--no-progress"]
REPRODUCE_FLAGS = ["--threads", "1", "--eval-limit", "4", "--eval-batch-size", "2", "--max-new-tokens", "2",
                   "--max-length", str(MAX_LENGTH), "--no-progress",
                   "--encoder-option", "epochs=1", "--encoder-option", "batch_size=8",
                   "--encoder-option", "probe_samples=8", "--encoder-option", "encoder=pointmlp-elite",
                   "--stage-option", "max_steps=1", "--stage-option", "batch_size=4",
                   "--stage-option", "limit_train=8", "--stage-option", "limit_valid=4"]


# ----------------------------------------------------------------------------- helpers

def cli(capsys, caplog, *argv) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of ``facephi *argv``; warnings logged during the call count
    as stderr lines (the CLI's logging handler prints them there); an uncaught exception fails."""
    capsys.readouterr()
    caplog.clear()
    argv = [str(a) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except AssertionError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a traceback for the user
        pytest.fail(f"facephi {' '.join(argv[:1])}: uncaught {type(exc).__name__}: {exc}")
    out, err = capsys.readouterr()
    logged = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    return code, out, logged + err.splitlines()


def one_error(capsys, caplog, *argv, code: int = 2) -> str:
    """The one stderr line of a refused ``facephi *argv``, checked: exit status, prefix, no traceback."""
    command = str(argv[0])
    status, _, lines = cli(capsys, caplog, *argv)
    shown = "\n".join(lines)
    assert status == code, f"exit status {status}, expected {code}; stderr:\n{shown}"
    assert "Traceback" not in shown, shown
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{shown}"
    assert lines[0].startswith(f"facephi {command}: error: "), lines[0]
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (to check that nothing was lost or changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_data(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rewrite_csv_line(data: Path, line: int, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` in line ``line`` (1-based) of ``data/samples.csv``."""
    path = data / "samples.csv"
    lines = path.read_bytes().split(b"\n")
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new)
    path.write_bytes(b"\n".join(lines))


@pytest.fixture
def refuse_work(monkeypatch):
    """Fail the test when expensive work starts: an encoder built, an LLM stage loaded or trained, an
    evaluation run, images meshed."""
    import facephi.eval.evaluate as evaluate
    import facephi.landmarks.extract as extract
    import facephi.train.align as align
    import facephi.train.runner as runner
    import facephi.train.stages as stages

    def refuse(what):
        def call(*args, **kwargs):
            raise AssertionError(f"expensive work started before the refusal: {what}")
        return call

    for module, name in ((align, "_new_model"), (runner, "load_stage_model"), (runner, "train_stage"),
                         (stages, "train_stage"), (evaluate, "evaluate_model"), (evaluate, "evaluate_encoder"),
                         (extract, "_run_tasks")):
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))


# ----------------------------------------------------------------------------- shared tiny inputs

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probes")


@pytest.fixture(scope="module")
def data(base) -> Path:
    return write_landmark_set(base / "data", SPLITS)


@pytest.fixture(scope="module")
def encoder(base) -> Path:
    return write_encoder(base / "encoder")


@pytest.fixture(scope="module")
def llm(base) -> Path:
    return write_llm(base / "llm")


@pytest.fixture(scope="module")
def stage1(base, data, encoder, llm) -> Path:
    """A stage-1 training run (one step) of the tiny encoder and the local tiny LLM folder ``llm``."""
    run = base / "run1"
    assert main(["train", "--stage", "1", "--encoder", str(encoder), "--llm", str(llm), "--data", str(data),
                 "--out", str(run), "--max-length", str(MAX_LENGTH), *STAGE_FLAGS]) == 0
    assert (run / "final" / "config.json").is_file()
    return run


@pytest.fixture(scope="module")
def extracted(base) -> Path:
    """A real extraction of three of the example photos (MediaPipe, one worker)."""
    out = base / "extracted"
    assert main(["extract", str(EXAMPLES), "--out", str(out), "--workers", "1", "--limit", "3",
                 "--no-progress"]) == 0
    assert (out / "manifest.json").is_file()
    return out


@pytest.fixture
def nan_data(data, tmp_path) -> Path:
    """A copy of ``data`` with one NaN landmark in sample ``BAD_SAMPLE``."""
    copy = copy_data(data, tmp_path / "nan-data")
    landmarks = np.load(copy / "landmarks.npy")
    landmarks[BAD_SAMPLE, 100, 1] = np.nan
    np.save(copy / "landmarks.npy", landmarks)
    return copy


def align_argv(data: Path, out: Path, *extra) -> list:
    return ["align", "--data", data, "--out", out, *TINY_ENCODER_FLAGS, *extra]


def stage1_argv(data: Path, out: Path, encoder: Path, llm: Path, *extra) -> list:
    return ["train", "--stage", "1", "--encoder", encoder, "--llm", llm, "--data", data, "--out", out,
            "--max-length", MAX_LENGTH, *STAGE_FLAGS, *extra]


def eval_argv(model: Path, data: Path, out: Path, *extra) -> list:
    return ["eval", "--model", model, "--data", data, "--out", out, "--threads", "1", "--device", "cpu",
            "--max-new-tokens", "2", "--batch-size", "4", "--no-progress", *extra]


def reproduce_argv(data: Path, out: Path, llm: Path, *extra) -> list:
    return ["reproduce", "--data", data, "--out", out, "--llm", llm, *REPRODUCE_FLAGS, *extra]


def predict_errors(lines: list[str]) -> list[str]:
    """The per-input error lines of `facephi predict` (its closing count line left out)."""
    return [line for line in lines if not re.search(r"\d+ of \d+ inputs failed", line)]


# ----------------------------------------------------------------------------- 1. a NaN landmark

SAMPLE_NAMED = re.compile(rf"\bsamples? {BAD_SAMPLE}\b|\[{BAD_SAMPLE}\]|\bindex {BAD_SAMPLE}\b")


def test_nan_landmark_eval(nan_data, encoder, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *eval_argv(encoder, nan_data, tmp_path / "out"))
    assert str(nan_data) in line and "non-finite" in line and SAMPLE_NAMED.search(line), line


def test_nan_landmark_train(nan_data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *stage1_argv(nan_data, tmp_path / "run", encoder, llm))
    assert str(nan_data) in line and "non-finite" in line and SAMPLE_NAMED.search(line), line


def test_bad_data_train_leaves_no_out_folder(nan_data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *stage1_argv(tmp_path / "nope", tmp_path / "run1", encoder, llm))
    assert "nope: not found (--data)" in line, line
    one_error(capsys, caplog, *stage1_argv(nan_data, tmp_path / "run2", encoder, llm))
    assert not (tmp_path / "run1").exists() and not (tmp_path / "run2").exists()


def test_nan_landmark_align_refuses_instead_of_dropping(nan_data, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *align_argv(nan_data, tmp_path / "enc"))
    assert str(nan_data) in line and "non-finite" in line and SAMPLE_NAMED.search(line), line
    assert not (tmp_path / "enc" / "config.json").exists()


def test_nan_landmark_predict_dataset_folder(nan_data, encoder, capsys, caplog):
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", nan_data)
    errors = predict_errors(lines)
    assert code == 0, lines  # the other samples are answered
    assert len(errors) == 1, "\n".join(lines)
    # A dataset folder's inputs are named DATA:PATH (the row's image path): that names the bad sample.
    assert "non-finite" in errors[0] and f"{nan_data}:img5.png" in errors[0], errors[0]
    rows = [json.loads(row) for row in out.splitlines()]
    assert len(rows) == sum(SPLITS.values()) and sum("error" in row for row in rows) == 1


# ----------------------------------------------------------------------------- 2. samples.csv not UTF-8

@pytest.fixture
def latin1_data(data, tmp_path) -> Path:
    """``samples.csv`` with a Latin-1 byte on line 6 (sample 4)."""
    copy = copy_data(data, tmp_path / "latin1-data")
    rewrite_csv_line(copy, 6, b"img4.png", "imgé4.png".encode("latin-1"))
    return copy


def _names_line_6(line: str, data: Path) -> None:
    assert str(data / "samples.csv") in line and "line 6" in line and "UTF-8" in line, line


def test_not_utf8_align(latin1_data, tmp_path, capsys, caplog, refuse_work):
    _names_line_6(one_error(capsys, caplog, *align_argv(latin1_data, tmp_path / "enc")), latin1_data)


def test_not_utf8_train(latin1_data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    _names_line_6(one_error(capsys, caplog, *stage1_argv(latin1_data, tmp_path / "run", encoder, llm)), latin1_data)


def test_not_utf8_eval(latin1_data, encoder, tmp_path, capsys, caplog, refuse_work):
    _names_line_6(one_error(capsys, caplog, *eval_argv(encoder, latin1_data, tmp_path / "out")), latin1_data)


def test_not_utf8_reproduce(latin1_data, llm, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *reproduce_argv(latin1_data, tmp_path / "run", llm))
    _names_line_6(line, latin1_data)
    assert not (tmp_path / "run" / "encoders").exists()


def test_not_utf8_predict(latin1_data, encoder, capsys, caplog):
    code, _, lines = cli(capsys, caplog, "predict", "--model", encoder, "--threads", "1", "--device", "cpu",
                         latin1_data)
    errors = predict_errors(lines)
    assert code != 0 and "Traceback" not in "\n".join(lines)
    assert len(errors) == 1, "\n".join(lines)
    _names_line_6(errors[0], latin1_data)


# ----------------------------------------------------------------------------- 3. image width 0

@pytest.fixture
def zero_width_data(data, tmp_path) -> Path:
    """``samples.csv`` with width 0 on line 4 (sample 2)."""
    copy = copy_data(data, tmp_path / "zero-width-data")
    rewrite_csv_line(copy, 4, b",48,48", b",0,48")
    return copy


def _names_line_4(line: str, data: Path) -> None:
    assert str(data / "samples.csv") in line and "line 4" in line and "width" in line, line


def test_zero_width_eval(zero_width_data, encoder, tmp_path, capsys, caplog, refuse_work):
    _names_line_4(one_error(capsys, caplog, *eval_argv(encoder, zero_width_data, tmp_path / "out")),
                  zero_width_data)


def test_zero_width_train(zero_width_data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    _names_line_4(one_error(capsys, caplog, *stage1_argv(zero_width_data, tmp_path / "run", encoder, llm)),
                  zero_width_data)


def test_zero_width_align(zero_width_data, tmp_path, capsys, caplog, refuse_work):
    _names_line_4(one_error(capsys, caplog, *align_argv(zero_width_data, tmp_path / "enc")), zero_width_data)


def test_zero_width_predict(zero_width_data, encoder, capsys, caplog):
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--threads", "1", "--device", "cpu",
                           zero_width_data)
    errors = predict_errors(lines)
    assert code != 0 and len(errors) == 1, "\n".join(lines)  # not a silent success
    _names_line_4(errors[0], zero_width_data)


# ----------------------------------------------------------------------------- 4. an unwritable --out

UNWRITABLE = Path("/proc/x")


def _names_out(line: str) -> None:
    assert str(UNWRITABLE) in line and "--out" in line, line


def test_unwritable_out_align(data, capsys, caplog, refuse_work):
    _names_out(one_error(capsys, caplog, *align_argv(data, UNWRITABLE)))


def test_unwritable_out_train(data, encoder, llm, capsys, caplog, refuse_work):
    _names_out(one_error(capsys, caplog, *stage1_argv(data, UNWRITABLE, encoder, llm)))


def test_unwritable_out_eval(data, encoder, capsys, caplog, refuse_work):
    _names_out(one_error(capsys, caplog, *eval_argv(encoder, data, UNWRITABLE)))


def test_unwritable_out_reproduce(data, llm, capsys, caplog, refuse_work):
    _names_out(one_error(capsys, caplog, *reproduce_argv(data, UNWRITABLE, llm)))


# ----------------------------------------------------------------------------- 5. no projector.safetensors

@pytest.fixture
def no_projector(stage1, tmp_path) -> Path:
    model = shutil.copytree(stage1 / "final", tmp_path / "model")
    (model / "projector.safetensors").unlink()
    return model


def _names_projector(line: str, model: Path) -> None:
    assert str(model / "projector.safetensors") in line and "missing" in line, line


def test_missing_projector_train_init(no_projector, data, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, "train", "--stage", "2", "--init", no_projector, "--data", data,
                     "--out", tmp_path / "run2", *STAGE_FLAGS)
    _names_projector(line, no_projector)


def test_missing_projector_eval(no_projector, data, tmp_path, capsys, caplog, refuse_work):
    _names_projector(one_error(capsys, caplog, *eval_argv(no_projector, data, tmp_path / "out")), no_projector)


def test_missing_projector_predict(no_projector, tmp_path, capsys, caplog):
    np.save(tmp_path / "face.npy", np.random.default_rng(0).uniform(0.2, 0.8, (478, 3)).astype(np.float32))
    line = one_error(capsys, caplog, "predict", "--model", no_projector, "--device", "cpu", tmp_path / "face.npy")
    _names_projector(line, no_projector)


def test_missing_projector_demo(no_projector, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, "demo", "--model", no_projector, "--images", EXAMPLES,
                     "--work", tmp_path / "work", "--threads", "1", "--no-progress")
    _names_projector(line, no_projector)
    assert not (tmp_path / "work").exists()


# ----------------------------------------------------------------------------- 6. the base LLM folder moved

@pytest.fixture
def moved_llm(stage1, llm):
    """The stage-1 model's base LLM folder renamed for the test (put back after it)."""
    assert json.loads((stage1 / "final" / "config.json").read_text())["llm"] == str(llm.resolve())
    moved = llm.with_name("llm-moved")
    llm.rename(moved)
    try:
        yield stage1 / "final"
    finally:
        moved.rename(llm)


def _says_llm_missing(line: str, llm: Path) -> None:
    assert str(llm.resolve()) in line and "does not exist" in line and "Repo id" not in line, line


@pytest.mark.parametrize("command", ["eval", "predict", "train"])
def test_moved_base_llm(command, moved_llm, llm, data, tmp_path, capsys, caplog, refuse_work):
    np.save(tmp_path / "face.npy", np.random.default_rng(0).uniform(0.2, 0.8, (478, 3)).astype(np.float32))
    argv = {
        "eval": eval_argv(moved_llm, data, tmp_path / "out"),
        "predict": ["predict", "--model", moved_llm, "--device", "cpu", tmp_path / "face.npy"],
        "train": ["train", "--stage", "2", "--init", moved_llm, "--data", data, "--out", tmp_path / "run2",
                  *STAGE_FLAGS],
    }[command]
    _says_llm_missing(one_error(capsys, caplog, *argv), llm)


# ----------------------------------------------------------------------------- 7. align --probe-samples 0

def test_align_probe_samples_zero_is_refused_at_once(data, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *align_argv(data, tmp_path / "enc", "--probe-samples", "0"))
    assert "--probe-samples" in line, line
    assert not (tmp_path / "enc").exists()  # nothing saved


# ----------------------------------------------------------------------------- 8. bad numbers

def test_train_lr_nan(data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *stage1_argv(data, tmp_path / "run", encoder, llm, "--lr", "nan"))
    assert "--lr" in line and "nan" in line, line
    assert not (tmp_path / "run").exists()


def test_reproduce_threads_negative(data, llm, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *reproduce_argv(data, tmp_path / "run", llm, "--threads", "-1"))
    assert "--threads" in line, line
    assert not (tmp_path / "run" / "encoders").exists()


def test_predict_image_size_nan(encoder, tmp_path, capsys, caplog):
    np.save(tmp_path / "face.npy", np.random.default_rng(0).uniform(0.2, 0.8, (478, 3)).astype(np.float32))
    line = one_error(capsys, caplog, "predict", "--model", encoder, "--image-size", "nan", "480",
                     tmp_path / "face.npy")
    assert "--image-size" in line and "nan" in line, line


# ----------------------------------------------------------------------------- 9. an all-zero .npy

def test_predict_all_zero_npy_is_refused_and_the_good_one_answered(encoder, tmp_path, capsys, caplog):
    good, zero = tmp_path / "good.npy", tmp_path / "zero.npy"
    np.save(good, np.random.default_rng(0).uniform(0.2, 0.8, (478, 3)).astype(np.float32))
    np.save(zero, np.zeros((478, 3), np.float32))
    code, out, lines = cli(capsys, caplog, "predict", "--model", encoder, "--json", "--threads", "1",
                           "--device", "cpu", good, zero)
    assert code == 0, lines
    rows = {row["input"]: row for row in map(json.loads, out.splitlines())}
    assert rows[str(good)].get("predicted_class") in CLASSES and "error" not in rows[str(good)]
    assert "error" in rows[str(zero)] and rows[str(zero)].get("predicted_class") is None
    assert not rows[str(zero)].get("scores")
    errors = predict_errors(lines)
    assert len(errors) == 1 and str(zero) in errors[0] and "zero" in errors[0], lines


# ----------------------------------------------------------------------------- 10. extract: corrupt images, bad margin

def test_extract_of_only_corrupt_images_fails(tmp_path, capsys, caplog):
    for name in ("happiness", "sadness"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        (tmp_path / "photos" / name / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    line = one_error(capsys, caplog, "extract", tmp_path / "photos", "--out", tmp_path / "out", "--workers", "1",
                     "--no-progress")
    assert "no face" in line or "no image" in line, line


def test_extract_crop_margin_nan_writes_nothing(extracted, tmp_path, capsys, caplog, refuse_work):
    copy = copy_data(extracted, tmp_path / "extracted")
    before = digest(copy)
    for out in (copy, tmp_path / "fresh"):
        line = one_error(capsys, caplog, "extract", EXAMPLES, "--out", out, "--workers", "1", "--limit", "3",
                         "--crop-margin", "nan", "--no-progress")
        assert "--crop-margin" in line and "nan" in line, line
    assert digest(copy) == before  # manifest.json and the rest untouched
    assert not (tmp_path / "fresh" / "manifest.json").exists()


# ----------------------------------------------------------------------------- 11. demo on unreadable photos

def test_demo_on_unreadable_photos(tmp_path, capsys, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    rows = ["file,emotion"]
    for i, name in enumerate(("happiness", "sadness", "anger")):
        (photos / f"{name}_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
        rows.append(f"{name}_{i}.jpg,{name}")
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")
    line = one_error(capsys, caplog, "demo", "--train-from-scratch", "--images", photos, "--work", tmp_path / "work",
                     "--encoder-epochs", "1", "--stage-steps", "1", "--threads", "1", "--no-progress")
    assert "no labelled sample" not in line and "train split" not in line, line
    assert "no face" in line and "3 images" in line, line


# ----------------------------------------------------------------------------- 12. reproduce refuses before training

@pytest.mark.parametrize("flags,expected", [(["--eval-batch-size", "0"], "--eval-batch-size"),
                                            (["--llm", "MISSING"], "does not exist")])
def test_reproduce_refuses_before_any_encoder(flags, expected, data, llm, tmp_path, capsys, caplog, refuse_work):
    flags = [str(tmp_path / "no-llm") if f == "MISSING" else f for f in flags]
    line = one_error(capsys, caplog, *reproduce_argv(data, tmp_path / "run", llm, *flags))
    assert expected in line, line
    if "--llm" in flags:
        assert str(tmp_path / "no-llm") in line, line
    assert not (tmp_path / "run" / "encoders").exists()


# ----------------------------------------------------------------------------- 13. eval --max-new-tokens 100000

def test_eval_max_new_tokens_too_large(stage1, data, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *eval_argv(stage1 / "final", data, tmp_path / "out", "--max-new-tokens", "100000"))
    assert "--max-new-tokens" in line and "100000" in line, line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 14. train --max-length

def test_train_max_length_5_is_refused(data, encoder, llm, tmp_path, capsys, caplog, refuse_work):
    argv = stage1_argv(data, tmp_path / "run", encoder, llm)
    argv[argv.index("--max-length") + 1] = "5"
    line = one_error(capsys, caplog, *argv)
    assert "--max-length" in line and "5" in line, line
    assert not (tmp_path / "run").exists()


def test_train_max_length_too_short_for_the_tokenizer(data, encoder, llm, tmp_path, capsys, caplog):
    argv = stage1_argv(data, tmp_path / "run", encoder, llm)
    argv[argv.index("--max-length") + 1] = "16"  # valid for the parser, too short for the tokenizer
    line = one_error(capsys, caplog, *argv)
    assert "--max-length" in line and "16" in line, line


def test_failed_start_does_not_block_the_corrected_retry(data, encoder, llm, tmp_path, capsys, caplog,
                                                         monkeypatch):
    import facephi.train.runner as runner
    from facephi.utils.errors import FacePhiError

    run = tmp_path / "run"
    argv = stage1_argv(data, run, encoder, llm)
    short = list(argv)
    short[short.index("--max-length") + 1] = "16"
    code, _, lines = cli(capsys, caplog, *short)
    assert code == 2 and "--max-length" in lines[-1], "\n".join(lines)

    # an error after the run folder was created (here: while the data are prepared)
    real = runner.load_stage_data

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(runner, "load_stage_data", real)
        raise FacePhiError("simulated failure after the run folder was created")

    monkeypatch.setattr(runner, "load_stage_data", fail_once)
    code, _, lines = cli(capsys, caplog, *argv)
    assert code == 2 and "simulated failure" in lines[-1], "\n".join(lines)
    assert run.is_dir()

    code, _, lines = cli(capsys, caplog, *argv)  # the same command, good values: no --resume / --overwrite
    assert code == 0, "\n".join(lines)
    assert (run / "final" / "config.json").is_file()


# ----------------------------------------------------------------------------- 15. eval of a training run folder

def test_eval_of_a_training_run_folder_names_its_model(stage1, data, tmp_path, capsys, caplog, refuse_work):
    line = one_error(capsys, caplog, *eval_argv(stage1, data, tmp_path / "out"))
    assert f"{stage1} is a training run folder" in line and f"the model is in {stage1 / 'final'}" in line, line


# ----------------------------------------------------------------------------- 16. extract into another extraction

def test_extract_over_other_settings_is_refused_and_overwrite_replaces(extracted, tmp_path, capsys, caplog):
    copy = copy_data(extracted, tmp_path / "extracted")
    before = digest(copy)
    argv = ["extract", EXAMPLES, "--out", copy, "--workers", "1", "--limit", "3", "--crop-margin", "0.3",
            "--no-progress"]
    line = one_error(capsys, caplog, *argv)
    assert "crop_margin" in line and "0.2" in line and "0.3" in line and "--overwrite" in line, line
    assert digest(copy) == before

    code, _, lines = cli(capsys, caplog, *argv, "--overwrite")
    assert code == 0, "\n".join(lines)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["options"]["crop_margin"] == 0.3
