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

``--beside max-faces`` makes the first client post the largest allowed request instead (64 faces of
landmarks) and ``--beside bomb`` a 13000 x 13000 PNG of zeros (a few hundred KB), the audit's cases:
the others' latency shows whether one request blocks everyone, the process's peak memory whether a
bomb is decoded. ``--audit`` runs the plain, max-faces and bomb cases and writes
``benchmarks/results/serve_load.md`` (``--report`` names another file).

    python benchmarks/serve_load.py --audit --seconds 5                       # echo model
    python benchmarks/serve_load.py --audit --model default --seconds 20      # the shipped model
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import platform
import resource
import socket
import statistics
import struct
import threading
import time
import zlib
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
        """One answer per face, ``delay_s`` each (the server asks for at most 16 faces at a time): landmark arrays tagged by their first x; encoded
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


@functools.cache
def example_landmarks() -> np.ndarray:
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    with FaceMesher() as mesher:
        points = mesher(load_image(EXAMPLE).rgb).points
    if points is None:
        raise SystemExit(f"{EXAMPLE}: no face found")
    return points


@functools.cache
def bomb_png(side: int = 13000) -> bytes:
    """A ``side`` x ``side`` greyscale PNG of zeros, compressed row by row (never whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = bytes(side + 1)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load(url: str, clients: int = 8, seconds: float = 5.0, input_kind: str = "landmarks",
         check_echo: bool = False, request_timeout_s: float = 60.0, beside: str | None = None) -> dict[str, Any]:
    """``clients`` threads post to ``url``/predict until ``seconds`` have passed; the numbers. With
    ``beside`` ("max-faces" or "bomb") the first client posts that request instead, counted apart."""
    import httpx

    check_loopback(url)
    base = example_landmarks()
    image = EXAMPLE.read_bytes()
    special = {"max-faces": None, "bomb": bomb_png()}.get(beside) if beside else None
    latencies: list[float] = []
    errors: dict[str, int] = {}
    apart: dict[str, Any] = {"latencies": [], "statuses": {}}
    mixed = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def request(k: int, n: int, rng: np.random.Generator) -> tuple[dict[str, Any], str | None]:
        if beside and k == 0:
            if beside == "bomb":
                return {"content": special, "headers": {"Content-Type": "image/png"}}, None
            faces = base[None].repeat(64, axis=0) + rng.normal(0, 0.002, (64, 478, 3)).astype(np.float32)
            return {"json": {"landmarks": faces.tolist(), "image_size": [350, 350]}}, None
        if input_kind == "landmarks":
            points = base.copy()
            points[:, :2] += rng.normal(0, 0.002, (478, 2)).astype(np.float32)
            points[0, 0] = round(0.3 + k * 0.01 + n * 1e-5, 5)  # this request's own tag
            return ({"json": {"landmarks": points.tolist(), "image_size": [350, 350]}},
                    f"echo {float(np.float32(points[0, 0])):.6f}")
        return {"content": image, "headers": {"Content-Type": "image/jpeg"}}, "echo 350x350"

    def client(k: int) -> None:
        nonlocal mixed
        rng = np.random.default_rng(k)
        with httpx.Client(base_url=url, timeout=request_timeout_s) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                kwargs, expected = request(k, n, rng)
                start = time.perf_counter()
                try:
                    response = http.post("/predict", **kwargs)
                    elapsed, status = time.perf_counter() - start, str(response.status_code)
                    ok = response.status_code == 200
                    wrong = (ok and check_echo and expected is not None
                             and response.json()["faces"][0].get("answer") != expected)
                except httpx.HTTPError as exc:
                    elapsed, ok, status, wrong = time.perf_counter() - start, False, type(exc).__name__, False
                with lock:
                    if beside and k == 0:
                        apart["latencies"].append(elapsed)
                        apart["statuses"][status] = apart["statuses"].get(status, 0) + 1
                    elif ok:
                        latencies.append(elapsed)
                        mixed += wrong
                    else:
                        errors[status] = errors.get(status, 0) + 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + request_timeout_s + 5)
    wall = time.monotonic() - started
    with httpx.Client(base_url=url, timeout=10) as http:
        health = http.get("/health").json()
    result = {
        "url": url, "clients": clients, "seconds": round(wall, 2), "input": input_kind,
        "requests": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": errors,
        "mixed": mixed if check_echo else None,
        "per_second": round(len(latencies) / wall, 2) if wall else None,
        "p50_ms": round(1000 * percentile(latencies, 50), 1), "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None,
        "model": health.get("model"), "dropped": health.get("dropped"),
    }
    if beside:
        times = apart["latencies"]
        result["beside"] = {"kind": beside, "requests": len(times), "statuses": apart["statuses"],
                            "p50_ms": round(1000 * percentile(times, 50), 1),
                            "max_ms": round(1000 * max(times), 1) if times else None}
    return result


def run(model_path: str | None = None, model_ms: float = 20.0, clients: int = 8, seconds: float = 5.0,
        input_kind: str = "landmarks", url: str | None = None, timeout_s: float = 30.0,
        beside: str | None = None, model: Any = None) -> dict[str, Any]:
    """Start the server (unless ``url``), load it, stop it; the numbers of :func:`load`, with the
    in-process server's peak memory growth (``peak_rss_growth_mb``)."""
    if url is not None:
        return load(url, clients, seconds, input_kind, beside=beside)
    from facephi.serve.app import create_app

    if model is None:
        model = load_model(model_path, model_ms)
    app = create_app(model, 5 * 2**20, timeout_s)
    example_landmarks(), bomb_png()  # made before the memory is measured
    before = peak_rss_mb()
    with running_server(app) as base:
        result = load(base, clients, seconds, input_kind, check_echo=isinstance(model, EchoModel),
                      request_timeout_s=timeout_s + 10, beside=beside)
    result["peak_rss_growth_mb"] = round(peak_rss_mb() - before, 1)
    if isinstance(model, EchoModel):
        result["overlapping_model_calls"] = model.overlaps
    return result


def load_model(model_path: str | None, model_ms: float) -> Any:
    """The echo model (``model_path`` None), or a FacePhi model ("default": the shipped one)."""
    if model_path is None:
        return EchoModel(model_ms / 1000)
    from facephi.serve.api import FacePhi

    return FacePhi.from_pretrained(None if model_path == "default" else model_path)


AUDIT_CASES = (("plain", "landmarks", None), ("max-faces", "landmarks", "max-faces"), ("bomb", "image", "bomb"))


def audit(model_path: str | None, model_ms: float, clients: int, seconds: float, timeout_s: float,
          report: Path) -> list[dict[str, Any]]:
    """The audit's cases on one in-process server each (same model): rows written to ``report``."""
    model = load_model(model_path, model_ms)
    rows = []
    for name, input_kind, beside in AUDIT_CASES:
        result = run(clients=clients, seconds=seconds, input_kind=input_kind, timeout_s=timeout_s, beside=beside,
                     model=model)
        rows.append({"case": name, **result})
        print(json.dumps(rows[-1]), flush=True)
    write_report(report, rows, model_path, model_ms, clients, seconds, timeout_s)
    return rows


def write_report(path: Path, rows: list[dict[str, Any]], model_path: str | None, model_ms: float, clients: int,
                 seconds: float, timeout_s: float) -> None:
    """Add (or replace) this model's section of the markdown results file."""
    model = "echo model" if model_path is None else f"FacePhi `{model_path}`"
    title = f"## {model}" + (f", {model_ms:g} ms per face" if model_path is None else "")
    lines = [title, "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
             f"one process; {clients} clients for {seconds:g} s per case, `--timeout-s {timeout_s:g}`. Command: "
             f"`python benchmarks/serve_load.py --audit --clients {clients} --seconds {seconds:g} --timeout-s {timeout_s:g}"
             + (f" --model {model_path}" if model_path else f" --model-ms {model_ms:g}") + "`.", "",
             "| case | others: input | others: ok | others: errors | others: p50 ms | p95 ms | max ms "
             "| beside: requests (status) | beside: p50 ms | dropped work | peak memory growth MB |",
             "|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for row in rows:
        extra = row.get("beside")
        statuses = ", ".join(f"{k}: {v}" for k, v in extra["statuses"].items()) if extra else ""
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "none"
        beside = f"{extra['kind']}: {extra['requests']} ({statuses})" if extra else "-"
        lines.append(f"| {row['case']} | {row['input']} | {row['ok']} | {errors} | {row['p50_ms']} | {row['p95_ms']} "
                     f"| {row['max_ms']} | {beside} | {extra['p50_ms'] if extra else '-'} | {row.get('dropped')} "
                     f"| {row['peak_rss_growth_mb']} |")
    section = "\n".join(lines) + "\n"
    header = ("# `facephi serve` under load: the audit's cases\n\n"
              "Written by `benchmarks/serve_load.py --audit`. *plain*: every client posts one face of landmarks; "
              "*max-faces*: one client posts the largest allowed request (64 faces) while the others post one "
              "face each; *bomb*: one client posts a 13000 x 13000 PNG of zeros (a few hundred KB) while the "
              "others post the example photo. \"others\" are the other clients' requests; \"beside\" the "
              "special client's; *dropped work*: requests whose work was dropped after their 504; *peak memory "
              "growth*: the process's peak resident memory during the case over its peak before.\n\n")
    text = path.read_text(encoding="utf-8") if path.exists() else header
    sections = [part for part in text.split("\n## ")[1:] if not ("## " + part).startswith(title + "\n")]
    body = text.split("\n## ")[0].rstrip("\n") + "\n\n"
    path.write_text(body + "".join("## " + part.rstrip("\n") + "\n\n" for part in sections) + section,
                    encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="FacePhi model folder, or default for the shipped one (default: an echo "
                                        "model, HTTP layer only)")
    parser.add_argument("--model-ms", type=float, default=20.0, help="echo model time per face (default: 20)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--seconds", type=float, default=5.0, help="test length (default: 5)")
    parser.add_argument("--input", choices=("landmarks", "image"), default="landmarks")
    parser.add_argument("--beside", choices=("max-faces", "bomb"), help="the first client posts this instead")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="the server's --timeout-s (default: 30)")
    parser.add_argument("--url", help="a running server on this machine instead of an in-process one")
    parser.add_argument("--audit", action="store_true", help="run the plain, max-faces and bomb cases and write "
                                                             "--report")
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.md")
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    args = parser.parse_args()
    if args.clients < 1 or not 0 < args.seconds <= 600 or not args.timeout_s > 0:
        parser.error("--clients must be >= 1, --seconds in (0, 600] and --timeout-s > 0")
    if args.url:
        check_loopback(args.url)
    if args.audit:
        if args.url:
            parser.error("--audit runs its own server: drop --url")
        audit(args.model, args.model_ms, args.clients, args.seconds, args.timeout_s, args.report)
        return
    result = run(args.model, args.model_ms, args.clients, args.seconds, args.input, args.url, args.timeout_s,
                 args.beside)
    if args.json:
        print(json.dumps(result))
        return
    errors = ", ".join(f"{k}: {v}" for k, v in result["errors"].items()) or "none"
    print(f"{result['clients']} clients, {result['seconds']} s, {result['input']} -> {result['url']}/predict "
          f"({result['model']})")
    print(f"  requests {result['requests']}  ok {result['ok']}  ({result['per_second']}/s)  errors: {errors}")
    print(f"  latency p50 {result['p50_ms']} ms  p95 {result['p95_ms']} ms  max {result['max_ms']} ms")
    if result.get("beside"):
        print(f"  beside: {result['beside']}")
    if result.get("mixed") is not None:
        print(f"  answers of another request: {result['mixed']}  overlapping model calls: "
              f"{result.get('overlapping_model_calls', 'n/a')}")


if __name__ == "__main__":
    main()
