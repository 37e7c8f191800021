"""benchmarks/levers.py: the lever table from finished evaluation folders (written here by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_loader import load_benchmark
from eval_fixtures import write_eval


def test_table_rows_intervals_choice_and_missing_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, 400)
    good = np.where(rng.random(400) < 0.8, truth, (truth + 1) % 8)
    weak = np.where(rng.random(400) < 0.4, truth, (truth + 1) % 8)
    write_eval(tmp_path / "a" / "valid", truth, weak, split="valid")
    write_eval(tmp_path / "a" / "test", truth, weak, answered=weak)
    write_eval(tmp_path / "b" / "valid", truth, good, split="valid")
    write_eval(tmp_path / "b" / "test", truth, good)
    (tmp_path / "a" / "metrics.json").write_text(json.dumps({"wall_seconds": 600}))
    spec = {"title": "Levers", "base": "base text", "rows": [
        {"name": "weak", "lever": "baseline", "command": "facephi train A", "run": "a", "valid": "a/valid",
         "test": "a/test"},
        {"name": "good", "lever": "votes", "command": "facephi train B", "run": "b", "valid": "b/valid",
         "test": "b/test"},
        {"name": "later", "lever": "K>1", "command": "x", "run": "c", "valid": "c/valid", "test": "c/test"},
        {"name": "gpu", "lever": "paper preset", "not_run": "needs a GPU"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "levers.md"
    code = load_benchmark("levers").main(["--spec", str(tmp_path / "spec.json"), "--root", str(tmp_path),
                                          "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert "best_valid=good" in printed
    accuracy = float(next(line for line in printed if line.startswith("best_test_accuracy=")).split("=")[1])
    assert abs(accuracy - (good == truth).mean()) < 1e-4
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    weak_cells = [c.strip() for c in rows["weak"].strip("|").split("|")]
    assert weak_cells[-1] == "10 min"
    low, high = (float(v) for v in weak_cells[3].split("[")[1].rstrip("]").split(","))
    assert low < 100 * (weak == truth).mean() < high
    assert weak_cells[5] != "–" and [c.strip() for c in rows["good"].strip("|").split("|")][5] == "–"
    assert "not run: no finished valid / test evaluation" in rows["later"]
    corrected = [c.strip() for c in rows["weak, prior-corrected scoring"].strip("|").split("|")]
    assert corrected[-1] == "same model" and corrected[5] == "–" and "[" in corrected[3]
    assert "not run: needs a GPU" in rows["gpu"]
    assert "`facephi train B`" in text and "at once): met." in text  # 80 % accuracy and macro recall


def test_bad_spec_is_one_line_error(tmp_path, capsys):
    (tmp_path / "spec.json").write_text("{not json")
    assert load_benchmark("levers").main(["--spec", str(tmp_path / "spec.json")]) == 2
    assert "levers: error:" in capsys.readouterr().err


def webdev_eval(tmp_path, folder):
    """A finished web-dev style evaluation (every photo of a folder dataset, 3 without a face)."""
    from eval_fixtures import FirstCoordinateModel, write_photo_folder
    from facephi.eval.evaluate import evaluate_model
    from facephi.landmarks.store import LandmarkSet

    data = LandmarkSet.load(write_photo_folder(tmp_path / f"{folder}-data"))
    return evaluate_model(FirstCoordinateModel(), data, "all", progress=False, mode="both", out_dir=tmp_path / folder)


def test_webdev_columns_beside_fer_and_update_of_an_older_table(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, 200)
    for name in ("a", "b"):
        write_eval(tmp_path / name / "valid", truth, truth, split="valid")
        write_eval(tmp_path / name / "test", truth, truth, answered=truth)
    web = webdev_eval(tmp_path, "a/webdev")
    spec = {"title": "Levers", "rows": [
        {"name": "with", "lever": "x", "command": "c", "run": "a", "valid": "a/valid", "test": "a/test",
         "webdev": "a/webdev"},
        {"name": "without", "lever": "y", "command": "c", "run": "b", "valid": "b/valid", "test": "b/test"},
        {"name": "gpu", "lever": "z", "not_run": "needs a GPU"}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    levers = load_benchmark("levers")
    assert levers.main(["--spec", str(tmp_path / "spec.json"), "--root", str(tmp_path),
                        "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| ")}
    assert all(len(cells) == 10 for cells in rows.values())
    whole, scored = web.whole_set(), web.whole_set("score")
    assert rows["with"][7].startswith(f"{100 * whole.accuracy:.1f} [") and whole.n == 19  # all photos
    assert f"/ {100 * scored.balanced_accuracy:.1f} [" in rows["with"][8]
    assert rows["without"][7:9] == ["not measured"] * 2 and rows["gpu"][7:9] == ["not measured"] * 2
    assert "[" in rows["with, prior-corrected scoring"][8]  # the Valid prior divided out of the web-dev scores
    # an older table without web-dev columns: only those are added, every FER+ cell kept
    old = "\n".join(["# T", "", "text above", "", "| row | lever | V | a | b | c | d | time |", "|---|---|---|---|---|---|---|---|",
                     "| with | x | 1 / 2 | 3 | 4 | 5 | 6 | 7 min |", "| with, prior-corrected scoring | x | 1 | 2 | 3 | 4 | 5 | same |",
                     "| gpu | z | not run: needs a GPU | | | | | |", "", "text"]) + "\n"
    (tmp_path / "old.md").write_text(old)
    assert levers.main(["--spec", str(tmp_path / "spec.json"), "--root", str(tmp_path),
                        "--update", str(tmp_path / "old.md")]) == 0
    updated = (tmp_path / "old.md").read_text().splitlines()
    assert updated[2:6] == ["text above", "", levers.webdev_note(spec), ""]
    assert updated[6] == levers.HEADER and updated[-1] == "text"
    cells = [c.strip() for c in updated[8].strip("|").split("|")]
    assert cells[:7] == ["with", "x", "1 / 2", "3", "4", "5", "6"] and cells[9] == "7 min"
    assert cells[7] == rows["with"][7] and cells[8] == rows["with"][8]
    assert [c.strip() for c in updated[9].strip("|").split("|")][7:] == ["not measured", "not measured", "same"]
    assert levers.main(["--spec", str(tmp_path / "spec.json"), "--root", str(tmp_path),
                        "--update", str(tmp_path / "old.md")]) == 0  # again: the same
    assert (tmp_path / "old.md").read_text().splitlines() == updated


def test_webdev_benchmark_figures_and_pass_fail(tmp_path, capsys):
    from facephi.labels import CLASSES

    result = webdev_eval(tmp_path, "web")
    webdev = load_benchmark("webdev")
    fig = webdev.figures(tmp_path / "web")
    assert set(fig["readings"]) == {"answers", "score"} and fig["no_face"]["n"] == 3
    answers = fig["readings"]["answers"]
    whole = result.whole_set()
    assert answers["n"] == 19 and answers["accuracy"] == whole.accuracy
    assert answers["recall"]["anger"] == whole.per_class["anger"]["recall"]
    for name, row in answers["shares"].items():  # the criterion, class by class
        support, answered = whole.per_class[name]["support"], whole.per_class[name]["predicted"]
        limit = 0.05 if support / 19 < 0.03 else 1.5 * support / 19
        assert row["within"] == (answered / 19 <= limit)
    assert answers["shares_within"] == all(r["within"] for r in answers["shares"].values())
    assert answers["target_met"] == (whole.accuracy >= 0.45 and whole.balanced_accuracy >= 0.45)
    text = webdev.markdown(fig, "python benchmarks/webdev.py --model m")
    assert "19 photos" in text and "3 without a face" in text and ("FAIL" in text) == (
        not all(r["shares_within"] and r["target_met"] for r in fig["readings"].values()))
    assert len([line for line in text.splitlines() if line.startswith("| answers in words")]) == 3
    assert all(c in text for c in ("Anger", "Contempt")) and len(CLASSES) == 8
    # a prior divided out after the fact, from the stored probabilities (no photo without a face forgotten)
    tilted = webdev.figures(tmp_path / "web", "train", 0.5, tmp_path / "web-data" / "data")
    from facephi.eval.results import resolve_prior
    from facephi.landmarks.store import LandmarkSet

    prior, _ = resolve_prior("train", train_data=LandmarkSet.load(tmp_path / "web-data" / "data"))
    probs = result.class_probabilities() / np.sqrt(prior)
    truth = list(result.truth()) + [CLASSES.index("anger")] * 2 + [CLASSES.index("happiness")]
    expected = np.mean(np.array(truth) == np.array(list(probs.argmax(1)) + [-1] * 3))
    corrected = tilted["readings"]["score_prior_corrected"]
    assert corrected["n"] == 19 and corrected["accuracy"] == pytest.approx(expected)
    assert tilted["prior"]["name"] == "train" and tilted["prior"]["tau"] == 0.5
    assert "prior divided out: the train prior" in webdev.markdown(tilted, "c")
    assert webdev.main(["--model", str(tmp_path / "nomodel"), "--data", str(tmp_path / "missing"),
                        "--eval-dir", str(tmp_path / "web")]) == 2
    assert "not found" in capsys.readouterr().err
    assert webdev.main(["--model", str(tmp_path / "nomodel"), "--data", str(tmp_path / "web-data" / "data"),
                        "--prior", str(tmp_path / "nowhere.json")]) == 2  # before any model is loaded
    assert "not uniform, train, a file or a folder" in capsys.readouterr().err
