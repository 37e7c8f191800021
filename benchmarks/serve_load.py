"""Loopback load test of `facephi serve`: N concurrent clients for a few seconds, then p50/p95 latency.

    python benchmarks/serve_load.py                                  # echo model: HTTP layer only
    python benchmarks/serve_load.py --model runs/demo/final --input image --clients 4 --seconds 20
    python benchmarks/serve_load.py --url http://127.0.0.1:8000      # a running `facephi serve`

Without ``--url`` the app (``facephi.serve.app.create_app``) is served by uvicorn in this process
on 127.0.0.1 and a free port, with ``--model`` or, by default, an echo model that waits
``--model-ms`` per call and answers with a tag of its input (so every client can check it got its
own answer back: "mixed" counts answers that belong to another request). ``--url`` may only name
this machine (127.0.0.1, ::1, localhost). Each client posts its own landmarks (``--input
landmarks``, from the example photo, slightly moved per request) or the example photo itself
(``--input image``) until ``--seconds`` have passed; the run stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "images" / "happiness_1.jpg"
CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")


class EchoModel:
    """Stands in for ``FacePhi``: waits ``delay_s`` per call (one call at a time is checked) and
    answers ``"echo <tag>"`` where the tag is the first landmark's x (or the image width)."""

    kind = "echo"
    scores_from = "echo"

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self._active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self.overlaps += self._active > 1
        time.sleep(self.delay_s)

    def _exit(self) -> None:
        with self._lock:
            self._active -= 1

    @staticmethod
    def face(tag: str, **extra: Any) -> dict[str, Any]:
        scores = {name: round(1 / len(CLASSES), 4) for name in CLASSES}
        return {"input": "<landmarks>", "answer": f"echo {tag}", "predicted_class": None, "scores": scores, **extra}

    def iter_predict(self, items: list[Any], all_faces: bool = False, image_size: Any = None,
                     return_landmarks: bool = False) -> Iterator[dict]:
        """One answer per face, ``delay_s`` each: landmark arrays tagged by their first x; encoded
        images decoded as the real API decodes them (``load_image``, header checks included)."""
        from facephi.landmarks.images import ImageError, load_image

        for item in items:
            if isinstance(item, bytes):
                try:
                    image = load_image(item, name="<bytes>")
                except ImageError as exc:
                    yield {"input": "<bytes>", "error": str(exc)}
                    continue
                self._enter()
                self._exit()
                yield self.face(f"{image.width}x{image.height}", input="<bytes>")
                continue
            for face in np.asarray(item, dtype=np.float32).reshape(-1, 478, 3):
                self._enter()
                self._exit()
                yield self.face(f"{float(face[0, 0]):.6f}")


def free_port(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``app`` as ``facephi serve`` does (uvicorn with its limits) in a thread on ``host`` and a free
    port; yields the base URL."""
    from facephi.serve.server import make_server

    sock = free_port(host)
    server = make_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--url {url}: this load test only runs against this machine (127.0.0.1, ::1, localhost)")


def example_landmarks() -> np.ndarray:
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    with FaceMesher() as mesher:
        points = mesher(load_image(EXAMPLE).rgb).points
    if points is None:
        raise SystemExit(f"{EXAMPLE}: no face found")
    return points


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load(url: str, clients: int = 8, seconds: float = 5.0, input_kind: str = "landmarks",
         check_echo: bool = False, request_timeout_s: float = 60.0) -> dict[str, Any]:
    """``clients`` threads post to ``url``/predict until ``seconds`` have passed; the numbers."""
    import httpx

    check_loopback(url)
    base = example_landmarks() if input_kind == "landmarks" else None
    image = EXAMPLE.read_bytes()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    mixed = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal mixed
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=request_timeout_s) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                if base is not None:
                    points = base.copy()
                    points[:, :2] += rng.normal(0, 0.002, (478, 2)).astype(np.float32)
                    points[0, 0] = round(0.3 + k * 0.01 + n * 1e-5, 5)  # this request's own tag
                    expected = f"echo {float(np.float32(points[0, 0])):.6f}"
                    kwargs = {"json": {"landmarks": points.tolist(), "image_size": [350, 350]}}
                else:
                    expected = "echo 350x350"
                    kwargs = {"content": image, "headers": {"Content-Type": "image/jpeg"}}
                start = time.perf_counter()
                try:
                    response = http.post("/predict", **kwargs)
                    elapsed = time.perf_counter() - start
                    ok = response.status_code == 200
                    key = None if ok else str(response.status_code)
                    wrong = ok and check_echo and response.json()["faces"][0].get("answer") != expected
                except httpx.HTTPError as exc:
                    elapsed, ok, key, wrong = time.perf_counter() - start, False, type(exc).__name__, False
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        mixed += wrong
                    else:
                        errors[key] = errors.get(key, 0) + 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + request_timeout_s + 5)
    wall = time.monotonic() - started
    with httpx.Client(base_url=url, timeout=10) as http:
        health = http.get("/health").json()
    return {
        "url": url, "clients": clients, "seconds": round(wall, 2), "input": input_kind,
        "requests": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": errors,
        "mixed": mixed if check_echo else None,
        "per_second": round(len(latencies) / wall, 2) if wall else None,
        "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        "model": health.get("model"),
    }


def run(model_path: str | None = None, model_ms: float = 20.0, clients: int = 8, seconds: float = 5.0,
        input_kind: str = "landmarks", url: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """Start the server (unless ``url``), load it, stop it; the numbers of :func:`load`."""
    if url is not None:
        return load(url, clients, seconds, input_kind)
    from facephi.serve.app import create_app

    if model_path is None:
        model = EchoModel(model_ms / 1000)
    else:
        from facephi.serve.api import FacePhi

        model = FacePhi.from_pretrained(model_path)
    app = create_app(model, 5 * 2**20, timeout_s)
    with running_server(app) as base:
        result = load(base, clients, seconds, input_kind, check_echo=isinstance(model, EchoModel),
                      request_timeout_s=timeout_s + 10)
    if isinstance(model, EchoModel):
        result["overlapping_model_calls"] = model.overlaps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="FacePhi model folder (default: an echo model, HTTP layer only)")
    parser.add_argument("--model-ms", type=float, default=20.0, help="echo model time per call (default: 20)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="test length (default: 5)")
    parser.add_argument("--input", choices=("landmarks", "image"), default="landmarks")
    parser.add_argument("--url", help="a running server on this machine instead of an in-process one")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = parser.parse_args()
    if args.clients < 1 or not 0 < args.seconds <= 600:
        parser.error("--clients must be >= 1 and --seconds in (0, 600]")
    if args.url:
        check_loopback(args.url)
    result = run(args.model, args.model_ms, args.clients, args.seconds, args.input, args.url)
    if args.json:
        print(json.dumps(result))
        return
    errors = ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "none"
    print(f"{result['clients']} clients, {result['seconds']} s, {result['input']} -> {result['url']}/predict "
          f"({result['model']})")
    print(f"  requests {result['requests']}  ok {result['ok']}  ({result['per_second']}/s)  errors: {errors}")
    print(f"  latency p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  max {result['max_ms']} ms")
    if result.get("mixed") is not None:
        print(f"  answers of another request: {result['mixed']}  overlapping model calls: "
              f"{result.get('overlapping_model_calls', 'n/a')}")


if __name__ == "__main__":
    main()
