"""`facephi serve`: the HTTP API (FastAPI TestClient and a real uvicorn on 127.0.0.1), its error
cases, limits, concurrency, privacy (no file written), the CLI, the vendored web files and a short
loopback load test."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from facephi.labels import CLASSES
from facephi.serve.app import STATIC, create_app
from facephi.serve.bodies import MAX_FACES_PER_REQUEST
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "happiness_1.jpg"
VENDOR = STATIC / "vendor"

pytestmark = pytest.mark.timeout(300)


class FakeModel:
    """The interface of ``facephi.serve.api.FacePhi`` the app uses, answering with a tag of its input
    (the first landmark's x, or the image size); records overlapping calls; ``gate`` blocks calls."""

    kind = "facephi"
    scores_from = "likelihood"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.active = 0
        self.overlaps = 0
        self.calls = 0
        self.decodes = 0
        self._lock = threading.Lock()

    def _call(self) -> None:
        with self._lock:
            self.active += 1
            self.calls += 1
            self.overlaps += self.active > 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(20)
        time.sleep(self.delay_s)

    def _done(self) -> None:
        with self._lock:
            self.active -= 1

    @staticmethod
    def face(tag: str, **extra) -> dict:
        scores = dict(zip(CLASSES, np.round(np.linspace(1, 2, 8) / np.linspace(1, 2, 8).sum(), 4).tolist()))
        return {"input": "<landmarks>", "answer": f"answer {tag}", "predicted_class": "happiness",
                "scores": scores, **extra}

    def iter_predict(self, items, all_faces=False, image_size=None, return_landmarks=False):
        """One answer per face (one model call each): landmark arrays tagged by their first x and the
        image size; encoded images decoded like the real API (landmarks/images.py, in memory), a flat
        image has no face."""
        for item in items:
            if isinstance(item, bytes):
                yield self._image(item, return_landmarks)
                continue
            for points in np.asarray(item, np.float32).reshape(-1, 478, 3):
                yield self._landmarks(points, image_size, return_landmarks)

    def _landmarks(self, points, image_size, return_landmarks):
        self._call()
        try:
            if not points.any():
                return {"input": "<landmarks>", "error": "not a usable face: all landmarks are zero"}
            extra = {"landmarks": points[:, :2].tolist()} if return_landmarks else {}
            return self.face(f"{float(points[0, 0]):.5f} {image_size}", **extra)
        finally:
            self._done()

    def _image(self, data, return_landmarks):
        from facephi.landmarks.images import ImageError, load_image

        self.decodes += 1
        try:
            image = load_image(data, name="<bytes>")
        except ImageError as exc:
            return {"input": "<bytes>", "error": str(exc)}
        if image.rgb.min() == image.rgb.max():
            return {"input": "<bytes>", "error": "no face found (also retried with a border)", "faces": 0}
        self._call()  # the model: only for a face
        try:
            extra = {"landmarks": [[0.5, 0.5]] * 478} if return_landmarks else {}
            return self.face(f"{image.width}x{image.height}", input="<bytes>", box=[0, 0, 1, 1], faces=1, **extra)
        finally:
            self._done()


def face(tag: float = 0.31, seed: int = 0) -> list:
    points = np.random.default_rng(seed).uniform(0.2, 0.8, (478, 3))
    points[0, 0] = tag
    return points.tolist()


def png(size=(64, 48), noise: bool = True, seed: int = 0) -> bytes:
    from PIL import Image

    w, h = size
    pixels = (np.random.default_rng(seed).integers(0, 256, (h, w, 3)) if noise else np.full((h, w, 3), 128))
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def fake():
    return FakeModel()


@pytest.fixture
def client(fake):
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=10)) as c:
        yield c


# ------------------------------------------------------------------------------------ answers
def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"]["kind"] == "facephi" and body["classes"] == list(CLASSES)
    assert body["limits"]["max_upload_bytes"] == 2**20 and body["pending"] == 0 and body["busy_s"] is None


def test_json_landmarks_one_face_and_a_list(client):
    r = client.post("/predict", json={"landmarks": face(0.25), "image_size": [640, 480]})
    assert r.status_code == 200
    (only,) = r.json()["faces"]
    assert only["answer"] == "answer 0.25000 (640.0, 480.0)" and set(only["scores"]) == set(CLASSES)
    r = client.post("/predict?landmarks=1", json={"landmarks": [face(0.3), face(0.4)]})
    faces = r.json()["faces"]
    assert [f["answer"] for f in faces] == ["answer 0.30000 None", "answer 0.40000 None"]
    assert len(faces[0]["landmarks"]) == 478
    # one bad face among good ones: 200, the bad one carries its error
    mixed = client.post("/predict", json={"landmarks": [face(0.3), np.zeros((478, 3)).tolist()]}).json()["faces"]
    assert "answer" in mixed[0] and "all landmarks are zero" in mixed[1]["error"]


def test_images_raw_and_multipart(client):
    r = client.post("/predict", content=png(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "answer 64x48"
    r = client.post("/predict?landmarks=true", files={"file": ("me.png", png((80, 60)), "image/png")})
    assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "answer 80x60"
    assert len(r.json()["faces"][0]["landmarks"]) == 478
    # other form fields are skipped; a file part under another name is taken when no "file" field exists
    r = client.post("/predict", data={"note": "hi"}, files={"photo": ("me.png", png((70, 50)), "image/png")})
    assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "answer 70x50"
    r = client.post("/predict", content=png((90, 30)), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "answer 90x30"


def test_multipart_keeps_binary_bytes_exactly():
    from facephi.serve.bodies import multipart_file

    data = bytes(range(256)) * 40 + b"\r\n--\r\n\r\n--x"
    boundary = "----b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    assert multipart_file(body, f"multipart/form-data; boundary={boundary}") == data
    assert multipart_file(body, f'multipart/form-data; boundary="{boundary}"') == data


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("body, headers, status, words", [
    (b"hello", {}, 415, "Content-Type"),
    (b"hello", {"Content-Type": "text/plain"}, 415, "text/plain"),
    (b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "curl -F file=@photo.jpg"),
    (b"", {"Content-Type": "image/jpeg"}, 422, "empty upload"),
    (b"definitely not a picture", {"Content-Type": "image/jpeg"}, 422, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, {"Content-Type": "image/png"}, 422, "image"),
    (b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--x--\r\n",
     {"Content-Type": "multipart/form-data; boundary=x"}, 422, "no file"),
    (b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
     {"Content-Type": "multipart/form-data; boundary=x"}, 422, "cut short"),
    (b"irrelevant", {"Content-Type": "multipart/form-data"}, 422, "boundary"),
])
def test_bad_uploads_get_clear_4xx(client, fake, body, headers, status, words):
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert fake.calls == 0  # refused before the model


def test_no_face_is_422(client):
    r = client.post("/predict", content=png(noise=False), headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and "no face" in r.json()["detail"]
    assert r.json()["faces"][0]["faces"] == 0
    r = client.post("/predict", json={"landmarks": np.zeros((478, 3)).tolist()})
    assert r.status_code == 422 and "not a usable face" in r.json()["detail"]


@pytest.mark.parametrize("payload, words", [
    ("{not json", "not valid JSON"),
    ("[1, 2, 3]", "no \"landmarks\""),
    (json.dumps({"points": []}), "no \"landmarks\""),
    (json.dumps({"landmarks": face(), "extra": 1}), "unknown field"),
    (json.dumps({"landmarks": [[0.1, 0.2, 0.3]] * 477}), "shape [477, 3]"),
    (json.dumps({"landmarks": [[0.1, 0.2]] * 478}), "shape [478, 2]"),
    (json.dumps({"landmarks": [[[0.1, 0.2, 0.3]] * 478, [[0.1, 0.2]] * 478]}), "equally long"),
    (json.dumps({"landmarks": [["a", "b", "c"]] * 478}), "numbers"),
    (json.dumps({"landmarks": [[True, False, True]] * 478}), "numbers"),
    (json.dumps({"landmarks": []}), "empty"),
    (json.dumps({"landmarks": [[[0.5, 0.5, 0.5]] * 478] * (MAX_FACES_PER_REQUEST + 1)}), "at most"),
    ('{"landmarks": [[NaN, 0.2, 0.3]' + ', [0.1, 0.2, 0.3]' * 477 + "]}", "finite"),
    (json.dumps({"landmarks": face(), "image_size": [0, 480]}), "image_size"),
    (json.dumps({"landmarks": face(), "image_size": [640]}), "image_size"),
    (json.dumps({"landmarks": face(), "image_size": "640x480"}), "image_size"),
    (json.dumps({"landmarks": face(), "image_size": [1e300, 1e300]}), "between 1 and 100000"),
    (json.dumps({"landmarks": face(), "image_size": [1e-30, 480]}), "between 1 and 100000"),
    ('{"landmarks": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
])
def test_malformed_landmarks_are_422(client, fake, payload, words):
    r = client.post("/predict", content=payload, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert fake.calls == 0


def test_bad_query_flag(client):
    r = client.post("/predict?landmarks=maybe", json={"landmarks": face()})
    assert r.status_code == 422 and "landmarks" in r.json()["detail"]


def test_too_large_upload_is_413(client, fake):
    big = png((800, 800))  # about 1.9 MB of noise > the 1 MiB limit
    assert len(big) > 2**20
    for request in (dict(content=big, headers={"Content-Type": "image/png"}),
                    dict(files={"file": ("big.png", big, "image/png")}),
                    dict(content=json.dumps({"landmarks": [face()] * 60}), headers={"Content-Type": "application/json"})):
        r = client.post("/predict", **request)
        assert r.status_code == 413 and "at most 1 MB" in r.json()["detail"]
    assert fake.calls == 0


def test_upload_limit_is_checked_while_receiving(fake):
    """Without a Content-Length the body is counted as it arrives: 413 after the chunk that crosses
    the limit, the rest of the upload is never read."""
    app = create_app(fake, max_upload_bytes=1000, timeout_s=5)
    received = 0

    async def receive():
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"\xff" * 300, "more_body": received < 1000}

    sent = post_asgi(app, receive, [(b"transfer-encoding", b"chunked")])
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert received == 4  # 4 x 300 bytes > 1000: 1.2 KB of the 300 KB read
    assert fake.calls == 0


def test_a_body_that_arrives_too_slowly_is_408(fake):
    app = create_app(fake, max_upload_bytes=2**20, timeout_s=0.3)
    received = 0

    async def receive():
        nonlocal received
        received += 1
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"\xff" * 10, "more_body": received < 100}

    sent = post_asgi(app, receive)
    assert sent[0]["status"] == 408 and b"did not arrive within 0.3 s" in sent[1]["body"]
    assert received < 10 and fake.calls == 0 and fake.decodes == 0


def test_declared_too_large_body_is_refused_before_it_is_sent(fake):
    """On a real server, a Content-Length over the limit gets 413 at once, with no body sent."""
    with load_benchmark("serve_load").running_server(create_app(fake, max_upload_bytes=2**20, timeout_s=5)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 104857600\r\n\r\n")
            reply = b""
            while b"at most" not in reply and (chunk := sock.recv(65536)):
                reply += chunk
            reply = reply.decode("latin-1")
    assert reply.startswith("HTTP/1.1 413") and "at most 1 MB" in reply


def test_timeout_is_504_and_the_server_recovers(fake):
    fake.delay_s = 1.0
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=0.2)) as client:
        start = time.perf_counter()
        r = client.post("/predict", json={"landmarks": face()})
        assert r.status_code == 504 and "0.2 s" in r.json()["detail"]
        assert time.perf_counter() - start < 0.9
        fake.delay_s = 0.0
        time.sleep(1.0)  # the timed-out call finishes on the model thread
        assert client.post("/predict", json={"landmarks": face()}).status_code == 200


def test_full_queue_is_503(fake):
    fake.gate = threading.Event()
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=10, max_pending=1)) as client:
        first = {}
        thread = threading.Thread(target=lambda: first.update(r=client.post("/predict", json={"landmarks": face()})))
        thread.start()
        assert fake.started.wait(10)
        r = client.post("/predict", json={"landmarks": face()})
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        fake.gate.set()
        thread.join(10)
        assert first["r"].status_code == 200


# ------------------------------------------------------------------------------ concurrency
def test_concurrent_requests_get_their_own_answers_one_model_call_at_a_time(fake):
    fake.delay_s = 0.02
    n = 12
    results: dict[int, dict] = {}
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=30)) as client:
        def post(k: int) -> None:
            if k % 3 == 2:  # images and landmark requests mixed
                r = client.post("/predict", content=png((40 + k, 40)), headers={"Content-Type": "image/png"})
            else:
                r = client.post("/predict", json={"landmarks": face(0.2 + k / 100, seed=k), "image_size": [k + 1, 9]})
            results[k] = r.json()

        threads = [threading.Thread(target=post, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    for k in range(n):
        expected = f"answer {40 + k}x40" if k % 3 == 2 else f"answer {0.2 + k / 100:.5f} ({k + 1}.0, 9.0)"
        assert results[k]["faces"][0]["answer"] == expected
    assert fake.calls == n and fake.overlaps == 0


def test_health_answers_while_the_model_works(fake):
    fake.gate = threading.Event()
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=30)) as client:
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=client.post("/predict", json={"landmarks": face()})))
        thread.start()
        try:
            assert fake.started.wait(10)
            start = time.perf_counter()
            health = client.get("/health").json()
            assert time.perf_counter() - start < 1.0
            assert health["busy_s"] is not None and health["pending"] == 1
            assert client.get("/").status_code == 200  # the page too
        finally:
            fake.gate.set()
            thread.join(10)
        assert result["r"].status_code == 200


def test_pending_counts_work_until_it_ends(fake):
    """A timed-out request's work still running keeps its place in the bound: the next request gets 503,
    not a second model call beside it; once the work ends, requests are admitted again."""
    fake.gate = threading.Event()
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=0.3, max_pending=1)) as client:
        r = client.post("/predict", json={"landmarks": face()})
        assert r.status_code == 504
        assert fake.active == 1  # still working on the answered-504 request
        r = client.post("/predict", json={"landmarks": face()})
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        assert client.get("/health").json()["pending"] == 1
        fake.gate.set()
        deadline = time.monotonic() + 5
        while client.get("/health").json()["pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        fake.gate = None
        assert client.post("/predict", json={"landmarks": face()}).status_code == 200


def test_timed_out_work_is_dropped(fake):
    """The work of a request that got 504 stops at its next turn; work that never started never runs."""
    fake.delay_s = 0.05  # a turn: 16 faces, 0.8 s
    with TestClient(create_app(fake, max_upload_bytes=4 * 2**20, timeout_s=0.4)) as client:
        results = {}
        threads = [threading.Thread(target=lambda k=k: results.update({k: client.post(
            "/predict", json={"landmarks": [face(0.2 + k / 100)] * 40})})) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert [results[k].status_code for k in range(2)] == [504, 504]
        time.sleep(1.0)
        health = client.get("/health").json()
    assert health["pending"] == 0 and health["dropped"] == 2
    assert fake.calls == 16  # of the 80 faces asked: the one turn running when the requests timed out


def test_a_small_request_is_not_stuck_behind_a_maximum_one(fake):
    """Requests are worked on in turns: a one-face request sent while a 64-face one is being answered
    waits for at most one step of it, not for all of it."""
    fake.delay_s = 0.02  # 64 faces: about 1.3 s, in turns of 16 faces (0.32 s)
    with TestClient(create_app(fake, max_upload_bytes=4 * 2**20, timeout_s=30)) as client:
        big = {}
        thread = threading.Thread(target=lambda: big.update(r=client.post(
            "/predict", json={"landmarks": [face(0.5, seed=k) for k in range(MAX_FACES_PER_REQUEST)]}),
            done=time.perf_counter()))
        thread.start()
        assert fake.started.wait(10)
        start = time.perf_counter()
        small = client.post("/predict", json={"landmarks": face(0.25)})
        small_done = time.perf_counter()
        thread.join(30)
    assert small.status_code == 200 and small.json()["faces"][0]["answer"].startswith("answer 0.25000")
    assert small_done - start < 0.7 and big["done"] - small_done > 0.4
    assert big["r"].status_code == 200 and len(big["r"].json()["faces"]) == MAX_FACES_PER_REQUEST
    assert fake.overlaps == 0


@pytest.mark.parametrize("error, status, detail", [
    (RuntimeError("boom"), 500, "internal error: RuntimeError"),
    ("facephi", 500, "server error: the model folder vanished"),
])
def test_server_faults_are_5xx_with_a_logged_reason(fake, caplog, error, status, detail):
    from facephi.utils.errors import FacePhiError

    def broken(items, **kwargs):
        raise error if isinstance(error, Exception) else FacePhiError("the model folder vanished")
        yield

    fake.iter_predict = broken
    with TestClient(create_app(fake, max_upload_bytes=2**20, timeout_s=10)) as client:
        with caplog.at_level("ERROR", logger="facephi.serve.app"):
            r = client.post("/predict", json={"landmarks": face()})
    assert r.status_code == status and r.json()["detail"] == detail
    assert any(("boom" in rec.getMessage() or "vanished" in rec.getMessage()) for rec in caplog.records)


def test_images_are_decoded_once_in_the_model_worker_and_bombs_refused_by_header(client, fake, monkeypatch, tmp_path):
    import facephi.landmarks.images as images
    from test_images import write_png

    decoded = []
    real = images.from_pil

    def counting(*args, **kwargs):
        decoded.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "from_pil", counting)
    for request in (dict(content=png(), headers={"Content-Type": "image/png"}),
                    dict(files={"file": ("me.png", png(), "image/png")})):
        assert client.post("/predict", **request).status_code == 200
    assert decoded == ["facephi-model", "facephi-model"]  # once per upload, in the bounded worker
    bomb = write_png(tmp_path / "bomb.png", 13000, 13000).read_bytes()  # 164 KB, 169 Mpx
    r = client.post("/predict", content=bomb, headers={"Content-Type": "image/png"})
    assert r.status_code == 422 and "image too large" in r.json()["detail"] and "13000x13000" in r.json()["detail"]


def test_bodies_are_parsed_in_the_model_worker(fake, monkeypatch):
    import facephi.serve.app as app_module

    threads = []
    for name in ("landmarks_request", "multipart_file"):
        real = getattr(app_module, name)

        def spy(*args, real=real, **kwargs):
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        monkeypatch.setattr(app_module, name, spy)
    client = TestClient(create_app(fake, max_upload_bytes=8 * 2**20, timeout_s=10))
    assert client.post("/predict", json={"landmarks": face()}).status_code == 200
    assert client.post("/predict", files={"file": ("me.png", png(), "image/png")}).status_code == 200
    assert threads == ["facephi-model", "facephi-model"]
    # 80,000 form fields: refused after the 16th part, without parsing the rest
    fields = "".join(f"--x\r\nContent-Disposition: form-data; name=\"f{k}\"\r\n\r\n{k}\r\n" for k in range(80_000))
    start = time.perf_counter()
    r = client.post("/predict", content=(fields + "--x--\r\n").encode(),
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 422 and "more than 16 parts" in r.json()["detail"]
    assert time.perf_counter() - start < 2


def test_slow_headers_and_connections_over_the_cap_are_closed(fake):
    from facephi.serve.server import make_server

    app = create_app(fake, max_upload_bytes=2**20, timeout_s=5)
    server = make_server(app, header_timeout_s=0.5, max_connections=3)
    serve_load = load_benchmark("serve_load")
    sock = serve_load.free_port()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        address = sock.getsockname()

        def closed_within(conn: socket.socket, seconds: float) -> bool:
            conn.settimeout(seconds)
            try:
                return conn.recv(1024) == b""
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False

        slow = socket.create_connection(address)
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert closed_within(slow, 3)
        idle = [socket.create_connection(address) for _ in range(3)]
        time.sleep(0.1)
        extra = socket.create_connection(address)
        assert closed_within(extra, 0.3)  # over the cap: closed at once
        assert not closed_within(idle[0], 0.05)  # the others wait for their headers' deadline
        for conn in idle + [slow, extra]:
            conn.close()
        time.sleep(0.6)
        import httpx

        assert httpx.get(f"http://{address[0]}:{address[1]}/health", timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# ---------------------------------------------------------------------------------- privacy
@pytest.fixture
def nothing_written(monkeypatch):
    """Any temporary file or file opened for writing fails the request (and the test)."""
    import starlette.formparsers

    created = []

    def refuse(*args, **kwargs):
        created.append(args)
        raise AssertionError("a temporary file was created")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp",
                 "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    real_open = builtins.open

    def open_read_only(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            created.append((file, mode))
            raise AssertionError(f"{file} opened for writing")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_read_only)
    real_os_open = os.open

    def os_open_read_only(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            created.append((path, flags))
            raise AssertionError(f"{path} opened for writing")
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open_read_only)
    yield created
    assert not created


def test_large_uploads_are_never_written_to_disk(fake, nothing_written):
    big = png((1000, 1000))  # about 3 MB: Starlette's own form parser would spool it to a file
    assert len(big) > 2**21
    with TestClient(create_app(fake, max_upload_bytes=8 * 2**20, timeout_s=30)) as client:
        r = client.post("/predict", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "answer 1000x1000"
        r = client.post("/predict", content=big, headers={"Content-Type": "image/png"})
        assert r.status_code == 200


# ------------------------------------------------------------------- the real API, tiny model
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from facephi.serve.api import FacePhi
    from test_evaluate import tiny_facephi

    model = FacePhi.from_pretrained(tiny_facephi(tmp_path_factory.mktemp("serve") / "tiny"), device="cpu",
                                    max_new_tokens=4)
    yield model
    model.close()


@pytest.fixture(scope="module")
def photo_landmarks():
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    with FaceMesher() as mesher:
        return mesher(load_image(PHOTO).rgb).points


def test_real_model_image_landmarks_and_the_predict_json(tiny_model, photo_landmarks):
    with TestClient(create_app(tiny_model, max_upload_bytes=5 * 2**20, timeout_s=120)) as client:
        r = client.post("/predict?landmarks=1", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        (image_face,) = r.json()["faces"]
        assert set(image_face["scores"]) == set(CLASSES) and len(image_face["box"]) == 4
        from facephi.scoring.keywords import match_answer

        found = match_answer(image_face["answer"]).predicted
        assert image_face["predicted_class"] == (None if found is None else CLASSES[found])
        assert np.allclose(image_face["landmarks"], photo_landmarks[:, :2], atol=1e-4)
        # the same face as landmarks gets the same answer
        r = client.post("/predict", json={"landmarks": photo_landmarks.tolist(), "image_size": [350, 350]})
        (landmark_face,) = r.json()["faces"]
        assert landmark_face["answer"] == image_face["answer"] and landmark_face["scores"] == image_face["scores"]
        # the JSON of `facephi predict --json` (FacePhi.predict), but for the input's name
        direct = tiny_model.predict_one(str(PHOTO))
        served = client.post("/predict", files={"file": ("x.jpg", PHOTO.read_bytes(), "image/jpeg")}).json()["faces"][0]
        assert {k: v for k, v in served.items() if k != "input"} == {k: v for k, v in direct.items() if k != "input"}
        r = client.post("/predict", content=png((200, 200), noise=False), headers={"Content-Type": "image/png"})
        assert r.status_code == 422 and "no face" in r.json()["detail"]
        r = client.post("/predict", json={"landmarks": np.zeros((478, 3)).tolist()})
        assert r.status_code == 422 and "not a usable face" in r.json()["detail"]
        assert client.get("/health").json()["model"]["kind"] == "facephi"


def test_real_model_large_photo_is_never_written_to_disk(tiny_model, nothing_written):
    from PIL import Image

    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, (1100, 1100, 3)).astype(np.uint8)
    canvas[200:900, 200:900] = np.asarray(Image.open(PHOTO).convert("RGB").resize((700, 700)))
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, "PNG")
    assert out.tell() > 2**21
    with TestClient(create_app(tiny_model, max_upload_bytes=8 * 2**20, timeout_s=120)) as client:
        r = client.post("/predict", files={"file": ("big.png", out.getvalue(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["box"][0] > 150


# --------------------------------------------------------------------------- the CLI, served
def test_cli_serves_until_interrupted(tmp_path):
    from test_evaluate import tiny_facephi

    model = tiny_facephi(tmp_path / "tiny")
    process = subprocess.Popen(
        [sys.executable, "-m", "facephi.cli", "serve", "--port", "0", "--model", str(model), "--device", "cpu",
         "--threads", "1", "--max-upload-mb", "0.5", "--timeout-s", "60", "--max-new-tokens", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        assert match, line + process.stderr.read()
        import httpx

        url = match.group(1)
        assert httpx.get(url + "/health", timeout=30).json()["model"]["path"] == str(model)
        r = httpx.post(url + "/predict", json={"landmarks": face()}, timeout=60)
        assert r.status_code == 200 and "answer" in r.json()["faces"][0]
        r = httpx.post(url + "/predict", content=b"\0" * 600_000, headers={"Content-Type": "image/png"}, timeout=30)
        assert r.status_code == 413 and "0.5 MB" in r.json()["detail"]
        assert "<canvas" in httpx.get(url + "/", timeout=30).text
    finally:
        process.send_signal(2)  # Ctrl+C
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130 and "interrupted" in process.stderr.read()  # as every command on Ctrl+C


def test_cli_flags_are_checked(capsys, tmp_path):
    from facephi.cli import main

    # a host that cannot be listened on fails before the model loads (this model folder does not exist)
    assert main(["serve", "--host", "999.1.1.1", "--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "--host 999.1.1.1" in err and "absent" not in err and err.count("\n") == 1

    assert main(["serve", "--port", "-1"]) == 2
    assert "port (--port): must be >= 0" in capsys.readouterr().err
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "max_upload_mb (--max-upload-mb): must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--port", "eighty"])


# ------------------------------------------------------------------------------ the web page
def test_page_and_vendored_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert all(f'class="bar" data-class="{name}"' in html for name in CLASSES) and "Privacy" in html
    for name, kind in [("app.js", "javascript"), ("style.css", "text/css"), ("vendor/vision_bundle.mjs", "javascript"),
                       ("vendor/vision_wasm_internal.js", "javascript"),
                       ("vendor/vision_wasm_internal.wasm", "application/wasm")]:
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"], name
    assert client.head("/static/vendor/face_landmarker.task").status_code == 200
    # nothing on the page points elsewhere, and the bundle's usage telemetry is cut out
    for name in ("index.html", "app.js", "style.css"):
        assert not re.search(r"https?://\w", (STATIC / name).read_text(encoding="utf-8")), name
    bundle = (VENDOR / "vision_bundle.mjs").read_text(encoding="utf-8")
    assert "odml.pa.googleapis.com" not in bundle and "flush(t,e){if(this.i=[],1)t?.();" in bundle


def test_vendored_face_landmarker_finds_the_landmarks_facephi_finds(photo_landmarks):
    """The .task assembled from the mediapipe wheel's FaceMesh models (static/vendor/build_vendor.py)
    gives, through MediaPipe Tasks, the landmarks of facephi's FaceMesher (Python; the browser
    runs the same graph in WebAssembly)."""
    import mediapipe as mp
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision
    from PIL import Image

    options = vision.FaceLandmarkerOptions(
        base_options=tasks.BaseOptions(model_asset_buffer=(VENDOR / "face_landmarker.task").read_bytes()), num_faces=1)
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        rgb = np.ascontiguousarray(np.asarray(Image.open(PHOTO).convert("RGB")))
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
    points = np.array([[p.x, p.y, p.z] for p in result.face_landmarks[0]], dtype=np.float32)
    assert points.shape == (478, 3)
    assert np.abs(points - photo_landmarks).max() < 2e-3


# -------------------------------------------------------------------------------- load test
def test_short_loopback_load_test():
    result = load_benchmark("serve_load").run(model_ms=5, clients=4, seconds=1.0)
    assert result["ok"] >= 10 and result["errors"] == {}
    assert result["mixed"] == 0 and result["overlapping_model_calls"] == 0
    assert 0 < result["p50_ms"] <= result["p95_ms"]


def post_asgi(app, receive, extra_headers=()) -> list[dict]:
    """POST an image/jpeg body to ``/predict`` straight through the ASGI app; the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"image/jpeg"), *extra_headers],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return sent
