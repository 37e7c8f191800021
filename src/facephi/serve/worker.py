"""The model worker of ``facephi serve``: one thread runs every request's work (body parsing, image
decoding, meshing, the model) in turns, with a deadline per request and a bounded number of requests
admitted at once.

A request's work is an iterator of steps, each ``(answers, last)``: one model batch at most per step
(up to 16 faces, or one image). The worker takes one step of the oldest waiting request, then puts it
at the back of the line unless that was its last, so a small request waits for at most one batch of
each request before it, not for a 64-face request to end. A request counts against ``max_pending`` from its admission until its work has ended
(answered, failed, or dropped): work whose request has timed out or gone is dropped at its next turn.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Iterator

from facephi.serve.bodies import HTTPProblem

MAX_PENDING = 64
"""Requests admitted at once (waiting or being worked on); more get 503."""


class _Job:
    """One request's work: its steps, the answers so far, its deadline and the future it resolves."""

    def __init__(self, steps: Iterator[Any], deadline: float, loop: asyncio.AbstractEventLoop) -> None:
        self.steps, self.deadline, self.loop = steps, deadline, loop
        self.future: asyncio.Future = loop.create_future()
        self.future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read, even after a 504
        self.rows: list[Any] = []
        self.dropped = False

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the event loop is closed: nobody waits any more
            pass


class ModelWorker:
    """Runs the work of every request on one thread, in turns (see the module docstring)."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.answered = 0
        self.dropped = 0
        self.busy_since: float | None = None
        self._line: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="facephi-model", daemon=True)
        self._thread.start()

    async def run(self, steps: Iterator[tuple[list[Any], bool]], timeout_s: float) -> list[Any]:
        """Every answer of ``steps`` (``(answers, last)`` pairs); 503 when ``max_pending`` requests are admitted already, 504 (and
        the work dropped at its next turn) when it has not ended within ``timeout_s``."""
        with self._ready:
            if self._closed:
                raise HTTPProblem(503, "the server is shutting down")
            if self.pending >= self.max_pending:
                raise HTTPProblem(503, f"the server is busy ({self.pending} requests admitted); try again soon")
            self.pending += 1
            job = _Job(steps, time.monotonic() + timeout_s, asyncio.get_running_loop())
            self._line.append(job)
            self._ready.notify()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            job.dropped = True
            raise HTTPProblem(504, f"the model did not answer within {timeout_s:g} s (--timeout-s)") from None
        except asyncio.CancelledError:  # the client went away
            job.dropped = True
            raise

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._line and not self._closed:
                    self._ready.wait()
                if self._closed:
                    line, self._line = list(self._line), collections.deque()
                    for job in line:
                        self._end(job, error=HTTPProblem(503, "the server is shutting down"))
                    return
                job = self._line.popleft()
            if job.dropped or time.monotonic() > job.deadline:
                self._end(job, error=HTTPProblem(504, "the model did not answer in time (--timeout-s)"), dropped=True)
                continue
            self.busy_since = time.monotonic()
            try:
                rows, last = next(job.steps, ([], True))
            except BaseException as exc:  # noqa: BLE001 - handed to the request, which reports it
                self._end(job, error=exc)
                continue
            finally:
                self.busy_since = None
            job.rows.extend(rows)
            if last:
                self._end(job, result=job.rows)
                continue
            with self._ready:
                self._line.append(job)

    def _end(self, job: _Job, result: Any = None, error: BaseException | None = None, dropped: bool = False) -> None:
        close = getattr(job.steps, "close", None)
        if close is not None:
            try:
                close()  # a generator's cleanup (a dropped request's half-read input)
            except Exception:  # noqa: BLE001 - the request has ended either way
                pass
        with self._ready:
            self.pending -= 1
            self.answered += error is None
            self.dropped += dropped
        job.resolve(result, error)

    def close(self, wait_s: float = 0.0) -> None:
        """Stop after the current step (waiting up to ``wait_s`` for it); requests still waiting get 503."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if wait_s > 0 and self._thread is not threading.current_thread():
            self._thread.join(wait_s)
