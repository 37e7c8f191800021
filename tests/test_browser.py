"""The web page of `facephi serve` in headless Chromium (Python playwright, /usr/bin/chromium).

The server runs on 127.0.0.1 in a thread with a tiny random FacePhi model (or ``$FACEPHI_MODEL``
when ``FACEPHI_SCREENSHOT=1``: then docs/screenshot-web.png is written from the real model). Every
request the page makes to anywhere else is aborted and makes the test fail. Without Chromium or
playwright the tests are skipped, with the reason (``pytest -ra``).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from benchmark_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FACEPHI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
SCREENSHOT = os.environ.get("FACEPHI_SCREENSHOT") == "1"
PHOTO = ROOT / "examples" / "images" / "happiness_1.jpg"
WASM_LOG = ("INFO:", "WARNING:", "W0000", "I0000")
CLASSES = ["neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"Python playwright is not installed ({exc})")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium, or set FACEPHI_CHROMIUM)")
    from PIL import Image

    # Chromium's fake webcam plays this file: the example face on a grey 640x480 frame
    frame = Image.new("RGB", (640, 480), (90, 90, 90))
    frame.paste(Image.open(PHOTO).convert("RGB"), (145, 65))
    encoded = io.BytesIO()
    frame.save(encoded, "JPEG", quality=90)
    camera = tmp_path_factory.mktemp("camera") / "face.mjpeg"
    camera.write_bytes(encoded.getvalue() * 5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={camera}"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from facephi.serve.api import FacePhi
    from facephi.serve.app import create_app

    model_dir = None
    if SCREENSHOT:  # the real model when there is one: $FACEPHI_MODEL, else the shipped model
        from facephi.model.defaults import default_model

        model_dir = default_model() if (default_model() / "config.json").is_file() else None
    if not model_dir:
        from test_evaluate import tiny_facephi

        model_dir = tiny_facephi(tmp_path_factory.mktemp("serve") / "tiny")
    model = FacePhi.from_pretrained(model_dir, device="cpu", max_new_tokens=24 if SCREENSHOT else 6)
    with load_benchmark("serve_load").running_server(create_app(model, 5 * 2**20, 120.0)) as url:
        yield url
    model.close()


@pytest.fixture
def page(chromium, server):
    context = chromium.new_context(viewport={"width": 1200, "height": 900}, permissions=["camera"])
    elsewhere: list[str] = []
    errors: list[str] = []

    def route(r):
        if urlsplit(r.request.url).hostname == "127.0.0.1" or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            elsewhere.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_function("() => document.body.dataset.landmarker !== 'loading'", timeout=120_000)
    yield page
    context.close()
    assert not elsewhere, f"the page tried to reach other sites: {elsewhere}"
    # MediaPipe's WebAssembly writes its C++ log lines (INFO:, W0000 ...) to the console as errors
    assert not [e for e in errors if not e.startswith(WASM_LOG) and "no face" not in e.lower()], errors


def _wait_answer(page) -> None:
    page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)", timeout=120_000)
    state = page.evaluate("document.body.dataset.state")
    assert state == "done", page.inner_text("#status")


def _check_result(page, response: dict) -> None:
    face = next(f for f in response["faces"] if "error" not in f)
    assert page.is_visible("#result")
    answer = page.inner_text("#answer").strip()
    assert answer and answer == face["answer"].strip()
    bars = page.locator("#bars .bar")
    assert bars.count() == 8
    shown = {}
    for name in CLASSES:
        bar = page.locator(f".bar[data-class={name}]")
        assert bar.is_visible()
        shown[name] = float(bar.get_attribute("data-p"))
        assert bar.locator(".value").inner_text().endswith("%")
    assert shown == pytest.approx(face["scores"], abs=1e-6)
    assert sum(shown.values()) == pytest.approx(1.0, abs=0.01)
    top = max(shown, key=shown.get)
    assert "top" in page.locator(f".bar[data-class={top}]").get_attribute("class")
    width = page.evaluate(f"parseFloat(document.querySelector('.bar[data-class={top}] .fill').style.width)")
    assert width == pytest.approx(100 * shown[top], abs=0.1)


def _canvas_drawn(page) -> dict:
    """Points drawn, and how much of the canvas is the mesh's green (none on a grey photo)."""
    return page.evaluate("""() => {
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let green = 0, nonblank = 0;
        for (let i = 0; i < d.length; i += 4) {
            if (d[i + 1] > d[i] + 60 && d[i + 1] > d[i + 2] + 30) green++;
            if (d[i] + d[i + 1] + d[i + 2] > 30) nonblank++;
        }
        return {points: Number(c.dataset.points), green: green / (d.length / 4), nonblank: nonblank / (d.length / 4),
                drawn: document.body.dataset.drawn, width: c.width, height: c.height};
    }""")


def _mesh_of_photo() -> np.ndarray:
    from facephi.landmarks.images import load_image
    from facephi.landmarks.mesh import FaceMesher

    with FaceMesher() as mesher:
        return mesher(load_image(PHOTO).rgb).points


def test_photo_with_landmarks_found_in_the_browser(page, server):
    """The default: MediaPipe runs in the page, only landmarks are posted, and they are the very
    landmarks facephi's own FaceMesher finds in Python."""
    assert page.evaluate("document.body.dataset.landmarker") == "ready", page.inner_text("#landmarker-state")
    posted = []
    page.on("request", lambda r: posted.append(r) if r.url.endswith("/predict") or "/predict?" in r.url else None)
    page.set_input_files("#file", str(PHOTO))
    _wait_answer(page)
    assert [r.headers.get("content-type") for r in posted] == ["application/json"]  # no image left the browser
    body = posted[0].post_data_json
    response = httpx.post(server + "/predict", json=body, timeout=60).json()  # the same question again
    _check_result(page, response)
    assert body["image_size"] == [350, 350]
    browser_points = np.asarray(body["landmarks"], dtype=np.float32)
    assert browser_points.shape == (478, 3)
    python_points = _mesh_of_photo()
    assert np.abs(browser_points[:, :2] - python_points[:, :2]).max() < 2e-3  # the same mesh (3e-4 seen)
    assert np.abs(browser_points[:, 2] - python_points[:, 2]).mean() < 1e-3
    drawn = _canvas_drawn(page)
    assert drawn["drawn"] == "mesh" and drawn["points"] == 478 and drawn["green"] > 0.002 and drawn["nonblank"] > 0.5
    if SCREENSHOT:
        page.screenshot(path=str(ROOT / "docs" / "screenshot-web.png"), full_page=True)


def test_photo_sent_to_the_server_when_asked(page, server):
    page.uncheck("#local-landmarks")
    posted = []
    page.on("request", lambda r: posted.append(r) if "/predict" in r.url else None)
    page.set_input_files("#file", str(PHOTO))
    _wait_answer(page)
    response = httpx.post(server + "/predict?landmarks=1", content=PHOTO.read_bytes(),
                          headers={"Content-Type": "image/jpeg"}, timeout=60).json()
    _check_result(page, response)
    assert [r.headers.get("content-type") for r in posted] == ["image/jpeg"]
    assert posted[0].url.endswith("/predict?landmarks=1")
    assert len(response["faces"][0]["landmarks"]) == 478
    drawn = _canvas_drawn(page)
    assert drawn["drawn"] == "mesh" and drawn["points"] == 478 and drawn["green"] > 0.002


def test_a_photo_without_a_face_says_so(page, tmp_path):
    from PIL import Image

    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(blank)
    page.set_input_files("#file", str(blank))
    page.wait_for_function("() => document.body.dataset.state === 'error'", timeout=60_000)
    assert "no face" in page.inner_text("#status").lower()
    assert not page.is_visible("#result")
    assert _canvas_drawn(page)["drawn"] == "image"  # the photo is shown, without a mesh


def test_webcam_sends_only_landmarks_about_once_a_second(page, server):
    """Chromium's fake webcam shows the example face: landmarks are found in the page for every
    frame, posted (JSON only) about once a second, and answered; Stop ends it."""
    posted = []
    page.on("request", lambda r: posted.append((time.monotonic(), r)) if "/predict" in r.url else None)
    page.click("#webcam-start")
    _wait_answer(page)
    assert page.is_visible("#webcam-stop") and "only landmarks are sent" in page.inner_text("#status")
    body = posted[0][1].post_data_json
    assert body["image_size"] == [640, 480] and len(body["landmarks"]) == 478
    response = httpx.post(server + "/predict", json=body, timeout=60).json()
    _check_result(page, response)
    drawn = _canvas_drawn(page)
    assert drawn["drawn"] == "mesh" and drawn["points"] == 478 and drawn["green"] > 0.001
    mark = time.monotonic()  # posts are counted from here: a slow first answer does not skew the count
    page.wait_for_timeout(2500)
    page.click("#webcam-stop")
    stopped = time.monotonic()
    page.wait_for_timeout(1200)
    times = [t for t, _ in posted]
    assert all(r.headers.get("content-type") == "application/json" for _, r in posted)
    # about once a second (the page waits 1 s between posts; their events reach Python with some jitter)
    assert all(b - a >= 0.7 for a, b in zip(times, times[1:]))
    assert 1 <= len([t for t in times if mark <= t <= stopped]) <= 4  # ~2.5 s of webcam
    assert page.is_visible("#webcam-start")
    count = len(posted)
    page.wait_for_timeout(1500)
    assert len(posted) == count  # stopped


def test_without_the_in_browser_landmarker_photos_go_to_the_server_and_the_webcam_is_off(chromium, server):
    context = chromium.new_context()
    context.route("**/*", lambda r: r.abort() if "/vendor/" in r.request.url or not r.request.url.startswith(server)
                  else r.continue_())
    page = context.new_page()
    try:
        page.goto(server + "/")
        page.wait_for_function("() => document.body.dataset.landmarker === 'failed'", timeout=60_000)
        assert page.is_disabled("#local-landmarks") and not page.is_checked("#local-landmarks")
        assert page.is_disabled("#webcam-start") and "webcam is off" in page.inner_text("#landmarker-state")
        posted = []
        page.on("request", lambda r: posted.append(r) if "/predict" in r.url else None)
        page.set_input_files("#file", str(PHOTO))
        _wait_answer(page)
        assert [r.headers.get("content-type") for r in posted] == ["image/jpeg"]
        assert _canvas_drawn(page)["points"] == 478
    finally:
        context.close()
