"""Progress of long work that stays visible everywhere: a tqdm bar on a terminal, log lines elsewhere.

``progress_bar(...)`` returns a tqdm bar when stderr is a terminal. When it is not (a log file,
CI, ``nohup``), a tqdm bar would print nothing useful, so it returns a :class:`LineProgress`
instead, with the part of tqdm's interface the project uses (iteration, ``update``,
``set_postfix``, ``close``, context manager). It prints one line to stderr on the first update,
then at most every ``every_seconds`` and once more when closed::

    align epoch 3/20: 1,280/26,687 samples (4.8 %), 63.1 samples/s, ETA 6 min 42 s, loss=0.4521

The environment variable ``FACEPHI_PROGRESS_SECONDS`` overrides ``every_seconds`` (0 prints a line
on every update).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

ENV_SECONDS = "FACEPHI_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    initial: int | float = 0,
    every_seconds: float | None = None,
    leave: bool = True,
) -> Any:
    """A tqdm bar on a terminal, otherwise a :class:`LineProgress`; ``enabled=False`` shows nothing.

    ``every_seconds`` (default 30, overridden by ``$FACEPHI_PROGRESS_SECONDS``) is the interval of
    the log lines; ``leave`` only concerns the terminal bar (the log lines always stay).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if enabled and _isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                    dynamic_ncols=True, smoothing=0.1)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, initial=initial,
                        every_seconds=_interval(every_seconds))


def _isatty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _interval(every_seconds: float | None) -> float:
    value = os.environ.get(ENV_SECONDS, "").strip()
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass  # a typo in an environment variable must not stop a long run
    return DEFAULT_SECONDS if every_seconds is None else max(0.0, every_seconds)


class LineProgress:
    """tqdm-like progress that prints a line to stderr every ``every_seconds`` (no terminal needed)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | float | None = None,
                 desc: str = "", unit: str = "it", enabled: bool = True, initial: int | float = 0,
                 every_seconds: float = DEFAULT_SECONDS) -> None:
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.n = initial
        self.initial = initial
        self.every_seconds = every_seconds
        self.postfix: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.last_print: float | None = None
        self.closed = False

    # ------------------------------------------------------------------ tqdm interface
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.last_print is None or now - self.last_print >= self.every_seconds:
            self._print(now, final=False)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print(time.perf_counter(), final=True)

    # ------------------------------------------------------------------ the line
    def format_line(self, now: float | None = None, final: bool = False) -> str:
        elapsed = (time.perf_counter() if now is None else now) - self.start
        parts = [_count(self.n)]
        if self.total:
            parts[0] += f"/{_count(self.total)} {self.unit} ({100 * self.n / self.total:.1f} %)"
        else:
            parts[0] += f" {self.unit}"
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.unit}/s" if rate >= 1 else f"{rate:.2g} {self.unit}/s")
        if final:
            parts.append(f"took {_duration(elapsed)}")
        elif rate is not None and self.total and self.total > self.n:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return f"{self.desc}: {', '.join(parts)}" if self.desc else ", ".join(parts)

    def _print(self, now: float, final: bool) -> None:
        self.last_print = now
        if self.enabled:
            print(self.format_line(now, final), file=sys.stderr, flush=True)


def _count(n: int | float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
