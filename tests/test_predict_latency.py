"""benchmarks/predict_latency.py on a tiny saved FacePhi model: 2 example photos, 5 synthetic
landmark-set faces (no raw FER+ images: that part is skipped with a note); its machine-readable
lines and its markdown report."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
KEYS = ("p50_ms", "p95_ms", "extract_p50_ms", "generate_p50_ms", "generate_mean_tokens", "end_to_end_p50_ms",
        "float32_p50_ms", "float32_class_agreement")

pytestmark = pytest.mark.timeout(300)


def test_predict_latency_smoke(tmp_path, capsys):
    from test_evaluate import tiny_facephi
    from train_fixtures import write_landmark_set

    model = tiny_facephi(tmp_path / "models" / "facephi")
    data = write_landmark_set(tmp_path / "data", {"train": 16, "valid": 8, "test": 8})
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("happiness_1.jpg", "anger_1.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    out = tmp_path / "results" / "predict_latency.md"

    code = load_benchmark("predict_latency").main(["--model", str(model), "--images", str(photos), "--data", str(data),
                                   "--ferplus-images", str(tmp_path / "absent"), "--faces", "5",
                                   "--threads", "1", "--warmup", "1", "--max-new-tokens", "4",
                                   "--precision", "bfloat16", "--check-answers", "3", "--out", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key in KEYS:
            values[key] = float(value)
    assert set(values) == set(KEYS)
    for key in KEYS:
        assert values[key] > 0, (key, values)
    assert 1 <= values["generate_mean_tokens"] <= 4 and 0 <= values["float32_class_agreement"] <= 1
    assert "precision=bfloat16" in lines
    assert re.fullmatch(r"p50_ms=\d+\.\d+", next(line for line in lines if line.startswith("p50_ms=")))

    text = out.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    table = {}
    for row in rows:
        stage, inputs, n, p50, p95, mean = (cell.strip() for cell in row.strip("|").split("|"))
        table[(stage[:3], inputs)] = (int(n), float(p50), float(p95), float(mean))
    assert table[("(a)", "photos")][0] == 2 and table[("(d)", "photos")][0] == 2
    assert table[("(b)", "photos")][0] == 2 and table[("(b)", "FER+ Test")][0] == 5
    assert table[("(b)", "all")][0] == 7 and table[("(c)", "all")][0] == 7
    assert ("(a)", "FER+ Test") not in table  # no raw FER+ images here
    assert table[("(b3", "all")][0] == 6  # the float32 copy: 7 inputs, the first one warms it up
    n, p50, p95, mean = table[("(b)", "all")]
    assert 0 < p50 <= p95 and mean > 0 and abs(p50 - values["p50_ms"]) < 0.1
    assert "raw FER+ images" in text and "missing" in text and str(model) in text
    assert "torch threads 1" in text and "LLM precision: bfloat16" in text
    assert re.search(r"bfloat16 against float32 on the same 7 inputs: .* identical for \d of 3 inputs and names the same class for \d\.", text)


def test_predict_latency_missing_model(tmp_path, capsys):
    code = load_benchmark("predict_latency").main(["--model", str(tmp_path / "nothing"), "--faces", "1"])
    assert code == 2
    assert "error" in capsys.readouterr().err
