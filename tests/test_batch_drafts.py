"""benchmarks/batch_drafts.py on a tiny saved FacePhi model: every draft budget gives the same answers,
and the token positions of the first and later passes are counted."""

from __future__ import annotations

import re

import pytest
from benchmark_loader import load_benchmark

pytestmark = pytest.mark.timeout(600)


def test_batch_drafts_counts_positions_and_keeps_the_answers(tmp_path, capsys):
    from test_evaluate import tiny_facephi
    from train_fixtures import write_landmark_set

    model = tiny_facephi(tmp_path / "facephi")
    data = write_landmark_set(tmp_path / "data", {"train": 8, "valid": 4, "test": 6})
    out = tmp_path / "batch_drafts.md"
    code = load_benchmark("batch_drafts").main([
        "--model", str(model), "--data", str(data), "--faces", "6", "--batch-size", "3", "--draft-min", "2", "4",
        "--repeats", "2", "--threads", "1", "--out", str(out)])
    assert code == 0
    rows = [line for line in out.read_text().splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == 2
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[-1] == "6/6"  # the answers of every budget equal the first's
        first, later, total = (float(cells[i]) for i in (4, 5, 6))
        assert first > 0 and later >= 0 and total == pytest.approx(first + later, abs=0.15)
    assert "Faster than the default (4) in every repeat:" in out.read_text()
    assert load_benchmark("batch_drafts").main(["--faces", "0", "--out", str(out)]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert load_benchmark("batch_drafts").main(["--model", str(tmp_path / "absent"), "--data", str(data),
                                                "--out", str(out)]) == 2
    assert "absent: not found (--model)" in capsys.readouterr().err  # before any model loads
