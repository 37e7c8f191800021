"""Progress off a terminal: periodic log lines with counts, rate, ETA and postfix; tqdm on a terminal."""

from __future__ import annotations

import re
import sys

import pytest

from facephi.utils import progress as progress_module
from facephi.utils.progress import LineProgress, progress_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "perf_counter", fake)
    monkeypatch.delenv(progress_module.ENV_SECONDS, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    return fake


def test_lines_off_a_terminal_have_counts_rate_eta_and_postfix(clock: FakeClock, capsys) -> None:
    bar = progress_bar(total=26_687, desc="align epoch 3/20", unit="samples", every_seconds=30)
    assert isinstance(bar, LineProgress)
    with bar:
        clock.now += 20.3
        bar.set_postfix(loss="0.4521")
        bar.update(1280)  # the first update always prints
        clock.now += 10
        bar.update(64)  # 10 s after the last line: quiet
        clock.now += 25
        bar.update(64)  # 35 s after it: a line
        clock.now += 5
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == ("align epoch 3/20: 1,280/26,687 samples (4.8 %), 63.1 samples/s, "
                        "ETA 6 min 43 s, loss=0.4521")
    assert len(lines) == 3
    assert re.fullmatch(r"align epoch 3/20: 1,408/26,687 samples \(5\.3 %\), [\d.]+ samples/s, "
                        r"ETA \d+ min \d+ s, loss=0\.4521", lines[1])
    assert lines[2] == "align epoch 3/20: 1,408/26,687 samples (5.3 %), 23.3 samples/s, took 1 min 0 s, loss=0.4521"


def test_iteration_initial_and_environment_interval(clock: FakeClock, capsys, monkeypatch) -> None:
    monkeypatch.setenv(progress_module.ENV_SECONDS, "0")  # a line on every update
    seen = []
    for item in progress_bar(range(3), desc="eval", unit="batches", initial=0):
        clock.now += 2
        seen.append(item)
    assert seen == [0, 1, 2]
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [f"eval: {n}/3 batches ({100 * n / 3:.1f} %), 0.5 batches/s" + (f", ETA {2 * (3 - n)} s" if n < 3 else "")
                         for n in (1, 2, 3)]
    assert lines[3] == "eval: 3/3 batches (100.0 %), 0.5 batches/s, took 6 s"

    bar = progress_bar(total=10, initial=6, desc="extract", unit="img")  # resumed: the rate counts new work only
    clock.now += 4
    bar.update(2)
    bar.close()
    bar.close()  # closing twice prints once
    assert capsys.readouterr().err.splitlines() == [
        "extract: 8/10 img (80.0 %), 0.5 img/s, ETA 4 s", "extract: 8/10 img (80.0 %), 0.5 img/s, took 4 s"]


def test_disabled_prints_nothing(clock: FakeClock, capsys) -> None:
    with progress_bar(total=5, desc="x", enabled=False) as bar:
        bar.update(5)
        bar.set_postfix(loss=1)
    assert list(progress_bar([1, 2], enabled=False)) == [1, 2]
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_tqdm(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm.auto import tqdm

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(total=4, desc="stage 1", unit="steps", initial=1)
    try:
        assert isinstance(bar, tqdm) and bar.total == 4 and bar.n == 1
    finally:
        bar.close()
    disabled = progress_bar(total=4, enabled=False)
    assert isinstance(disabled, LineProgress)  # disabled: nothing at all, terminal or not
    disabled.close()
