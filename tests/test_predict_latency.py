"""benchmarks/predict_latency.py on a tiny saved FacePhi model: 2 example photos, 5 synthetic
landmark-set faces (no raw FER+ images: that part is skipped with a note); plain against fast path in
one process: its machine-readable lines and its markdown report."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
TIMINGS = tuple(f"{m}_p50_ms{s}" for m in ("answer", "scores", "end_to_end") for s in ("", "_float32", "_plain"))
RATES = tuple(f"{kind}_{when}" for kind in ("folder_faces_per_s", "video_faces_per_s", "video_realtime_factor")
              for when in ("before", "after"))

pytestmark = pytest.mark.timeout(600)


def test_predict_latency_compares_plain_and_fast_paths(tmp_path, capsys):
    from test_evaluate import tiny_facephi
    from train_fixtures import write_landmark_set

    model = tiny_facephi(tmp_path / "models" / "facephi")
    data = write_landmark_set(tmp_path / "data", {"train": 16, "valid": 8, "test": 8})
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("happiness_1.jpg", "anger_1.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    out = tmp_path / "results" / "predict_latency.md"

    code = load_benchmark("predict_latency").main([
        "--model", str(model), "--images", str(photos), "--data", str(data), "--ferplus-images", str(tmp_path / "absent"),
        "--faces", "5", "--threads", "1", "--warmup", "1", "--max-new-tokens", "4",
        "--end-to-end-limit", "2", "--batch-size", "4", "--video-fps", "2", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    values = dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)
    for key in TIMINGS + RATES:
        assert float(values[key]) > 0, (key, values)
    # the fast float32 path answers word for word as the plain one, probabilities within 1e-4
    assert values["identical_answers"] == "7/7"
    assert float(values["max_probability_difference"]) < 1e-4
    assert float(values["default_class_agreement"]) == 1.0 and values["precision"] == "float32"
    assert 0 <= float(values["int8_class_agreement"]) <= 1  # int8, measured as a lever
    assert float(values["answer_speedup"]) == pytest.approx(
        float(values["answer_p50_ms_plain"]) / float(values["answer_p50_ms_float32"]), rel=1e-2)

    text = out.read_text(encoding="utf-8")
    table = {}
    for row in (line for line in text.splitlines() if line.startswith("| ") and "---" not in line):
        setting, measure, inputs, n, *_ = (cell.strip() for cell in row.strip("|").split("|"))
        if n.isdigit():
            table[(setting, measure.split(" ")[0], inputs)] = int(n)
    for setting in ("plain", "fast float32", "fast int8"):
        assert table[(setting, "landmarks", "all")] == 7  # answers and scores of every face
        assert table[(setting, "image", "photos")] == 2  # end to end: the photos (no raw FER+ image here)
    assert table[("extraction", "image", "photos")] == 2
    assert "identical answers 7/7" in text and "raw FER+ images" in text and str(model) in text
    assert re.search(r"answer with template drafts from the trie only \(\d+ drafted tokens per pass; .*\): \d+\.\d ms", text)
    assert re.search(r"answer with template drafts, off the trie from the trained sentences .*\(kept\): \d+\.\d ms", text)
    assert "video_faces_per_s_after=" in text and "the 2 photos, 2 s each" in text
    figures = text.split("Figures (name=value, as printed):")[1].split("```")[1].split()
    assert figures == [line for line in lines if "=" in line and " " not in line]  # the printed lines, in the file
    assert "- identical_answers ≥ 99 % of N: met" in text and "- max_probability_difference ≤ 1e-4: met" in text


def test_predict_latency_missing_model(tmp_path, capsys):
    code = load_benchmark("predict_latency").main(["--model", str(tmp_path / "nothing"), "--faces", "1"])
    assert code == 2
    assert "error" in capsys.readouterr().err
