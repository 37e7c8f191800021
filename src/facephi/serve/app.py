"""``facephi serve``: the HTTP API and the web page (FastAPI; run by uvicorn).

Routes (see :func:`create_app`):

* ``POST /predict``: an image (raw body with an ``image/*`` Content-Type, or ``multipart/form-data``
  with a ``file`` field, as ``curl -F file=@photo.jpg`` sends it) or landmarks as JSON
  (``{"landmarks": [[x, y, z] x 478] or a list of those, "image_size": [W, H]}``, raw MediaPipe
  coordinates) → ``{"faces": [...]}``, one dict per face with the fields of ``facephi predict
  --json`` (``answer``, ``predicted_class``, ``scores``, ``box`` ...). Query flags: ``landmarks=1``
  adds each face's 478 [x, y] fractions (to draw the mesh), ``all_faces=1`` answers every face of
  an image, not only the largest.
* ``GET /health``: status, model, queue and limits.
* ``GET /``: the web page (``static/index.html``); ``/static/...`` its files.

Privacy: a request body is read into memory, never into a file (the multipart form is parsed here,
in memory: Starlette's own parser spools uploads above 1 MB to a temporary file); an image is
decoded in memory, meshed, and dropped with the request; only its landmarks reach the model. No
body is logged. Errors are JSON ``{"detail": "..."}``: 413 too large (checked while receiving,
before the rest is read), 415 not an image / JSON / form, 422 unreadable image, no face or
malformed landmarks, 503 queue full, 504 the model did not answer within the timeout.

Model calls run one at a time, in arrival order, on a single worker thread: requests never share
or mix model state, and the event loop stays free for ``/health`` and uploads meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from facephi import __version__
from facephi.labels import CLASSES
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
NUM_LANDMARKS = 478
MAX_FACES_PER_REQUEST = 64
"""Faces one JSON request may hold."""
MAX_PENDING = 64
"""Model calls waiting or running at once; more get 503 (the queue stays shorter than the timeout)."""
IMAGE_TYPES = ("image/", "application/octet-stream")
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page and everything it loads come from this server; nothing is fetched from elsewhere."""
LANDMARKS_FORMAT = ('expected JSON {"landmarks": [[x, y, z] x 478] or a list of those, "image_size": [W, H]} '
                    "with raw MediaPipe coordinates (x, y as fractions of the image)")


class HTTPProblem(Exception):
    """A request that cannot be answered: HTTP ``status`` and a one-line ``detail`` for the client."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail, **self.extra}, status_code=self.status)


# ------------------------------------------------------------------------------ request bodies
async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, in memory; 413 as soon as it is known to exceed ``limit`` bytes (a declared
    Content-Length, else the bytes received so far), without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPProblem(400, f"bad Content-Length header {declared!r}") from None
        if size > limit:
            raise HTTPProblem(413, too_large(size, limit))
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPProblem(413, too_large(None, limit))
    return bytes(body)


def too_large(size: int | None, limit: int) -> str:
    got = f" ({size / 2**20:.1f} MB)" if size is not None else ""
    return f"the upload is too large{got}: at most {limit / 2**20:g} MB (--max-upload-mb)"


def _header(headers: str) -> Any:
    return HeaderParser().parsestr(headers)


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The uploaded file of a ``multipart/form-data`` body, parsed in memory: the part named
    ``file`` (or ``image``), else the first part with a file name."""
    boundary = _header(f"Content-Type: {content_type}\n\n").get_param("boundary")
    if not boundary:
        raise HTTPProblem(422, "multipart/form-data without a boundary")
    delimiter = b"--" + str(boundary).encode("latin-1")
    position = body.find(delimiter)
    first_file = None
    while position >= 0:
        start = position + len(delimiter)
        if body[start:start + 2] == b"--":  # the closing delimiter
            break
        if body[start:start + 2] != b"\r\n":
            break
        start += 2
        end = body.find(b"\r\n" + delimiter, start)
        head_end = body.find(b"\r\n\r\n", start, end if end >= 0 else len(body))
        if end < 0 or head_end < 0:
            raise HTTPProblem(422, "the multipart/form-data body is cut short or malformed")
        headers = _header(body[start:head_end].decode("latin-1") + "\n\n")
        name = headers.get_param("name", header="content-disposition")
        if name in ("file", "image"):
            return body[head_end + 4:end]
        if first_file is None and headers.get_param("filename", header="content-disposition") is not None:
            first_file = body[head_end + 4:end]
        position = end + 2
    if first_file is not None:
        return first_file
    raise HTTPProblem(422, "no file in the multipart/form-data body: send the image as a field named file "
                           "(curl -F file=@photo.jpg)")


def check_image(data: bytes) -> None:
    """422 unless ``data`` decodes as an image, by the loader of image files (in memory, never on disk)."""
    from facephi.landmarks.images import ImageError, load_image

    try:
        load_image(data, name="the upload")
    except ImageError as exc:
        raise HTTPProblem(422, str(exc)) from None


def landmarks_request(body: bytes) -> tuple[np.ndarray, tuple[float, float] | None]:
    """(float32 [N, 478, 3] landmarks, image size or None) of a JSON body; 422 when malformed."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(422, f"the body is not valid JSON ({exc}): {LANDMARKS_FORMAT}") from None
    if not isinstance(document, dict) or "landmarks" not in document:
        raise HTTPProblem(422, f"no \"landmarks\" field: {LANDMARKS_FORMAT}")
    unknown = sorted(set(document) - {"landmarks", "image_size"})
    if unknown:
        raise HTTPProblem(422, f"unknown field(s) {', '.join(map(repr, unknown))}: {LANDMARKS_FORMAT}")
    try:
        raw = np.asarray(document["landmarks"])
    except (ValueError, TypeError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf" or raw.dtype == bool:
        raise HTTPProblem(422, f"landmarks must be numbers in equally long nested lists: {LANDMARKS_FORMAT}")
    if raw.size == 0:
        raise HTTPProblem(422, "no face: the landmark list is empty")
    if raw.shape == (NUM_LANDMARKS, 3):
        raw = raw[None]
    if raw.ndim != 3 or raw.shape[1:] != (NUM_LANDMARKS, 3):
        raise HTTPProblem(422, f"landmarks of shape {list(raw.shape)}: expected [{NUM_LANDMARKS}, 3] or "
                               f"[N, {NUM_LANDMARKS}, 3] ({LANDMARKS_FORMAT})")
    if len(raw) > MAX_FACES_PER_REQUEST:
        raise HTTPProblem(422, f"{len(raw)} faces in one request: at most {MAX_FACES_PER_REQUEST}")
    if not np.isfinite(raw).all():
        raise HTTPProblem(422, "landmarks must be finite numbers (found NaN or infinity)")
    size = document.get("image_size")
    if size is not None:
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in size)
                or not all(math.isfinite(v) and v > 0 for v in size)):
            raise HTTPProblem(422, f"image_size must be [W, H], two positive numbers, got {json.dumps(size)}")
        size = (float(size[0]), float(size[1]))
    return raw.astype(np.float32), size


def flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise HTTPProblem(422, f"query parameter {name}={value!r}: expected 1 or 0")


# ----------------------------------------------------------------------------------- the model
class ModelWorker:
    """Runs every model call on one thread, in arrival order, with a deadline and a bounded queue."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="facephi-model")
        self._lock = threading.Lock()
        self.max_pending = max_pending
        self.pending = 0
        self.busy_since: float | None = None
        self.answered = 0

    def _call(self, fn: Callable[[], Any]) -> Any:
        self.busy_since = time.monotonic()
        try:
            return fn()
        finally:
            self.busy_since = None
            with self._lock:
                self.answered += 1

    async def run(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        with self._lock:
            if self.pending >= self.max_pending:
                raise HTTPProblem(503, f"the server is busy ({self.pending} requests waiting); try again soon")
            self.pending += 1
        try:
            future = self._executor.submit(self._call, fn)
            try:
                # a timed-out request that has not started yet is dropped from the queue
                return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
            except asyncio.TimeoutError:
                raise HTTPProblem(504, f"the model did not answer within {timeout_s:g} s (--timeout-s)") from None
        finally:
            with self._lock:
                self.pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def model_info(model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(model).__name__}
    for name in ("kind", "scores_from", "precision"):
        try:
            value = getattr(model, name, None)
        except Exception:  # noqa: BLE001 - a property of a half-loaded model
            value = None
        if isinstance(value, (str, int, float, bool)):
            info[name] = value
    return info


def faces_response(faces: list[dict[str, Any]]) -> JSONResponse:
    """200 with the faces; 422 when no face could be answered (the first error is the detail)."""
    if not faces:
        raise HTTPProblem(422, "no face found")
    if all("error" in face for face in faces):
        errors = list(dict.fromkeys(str(face["error"]) for face in faces))
        raise HTTPProblem(422, "; ".join(errors), faces=faces)
    return JSONResponse({"faces": faces})


# ------------------------------------------------------------------------------------- the app
class SecurityHeaders:
    """ASGI middleware: the page may load nothing from elsewhere (CSP); answers are not cached."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        no_store = scope.get("path") in ("/predict", "/health")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if no_store:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(model: Any, max_upload_bytes: int = 5 * 2**20, timeout_s: float = 30.0, *,
               info: dict[str, Any] | None = None, max_pending: int = MAX_PENDING) -> FastAPI:
    """The FastAPI app serving ``model``.

    ``model`` is a :class:`facephi.serve.api.FacePhi` (or anything with its ``predict_landmarks``
    and ``predict_many`` methods); ``max_upload_bytes`` bounds a request body (413);
    ``timeout_s`` bounds the wait for the model, queue included (504); ``info`` is added to
    ``/health``'s model description; ``max_pending`` bounds the queue (503).
    """
    if max_upload_bytes <= 0 or not timeout_s > 0:
        raise ValueError("max_upload_bytes and timeout_s must be positive")
    worker = ModelWorker(max_pending)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        yield
        worker.close()

    app = FastAPI(title="FacePhi", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.worker = worker
    app.state.model = model

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> JSONResponse:  # noqa: ARG001
        return exc.response()

    @app.get("/health")
    async def health() -> JSONResponse:
        busy = worker.busy_since
        return JSONResponse({
            "status": "ok",
            "version": __version__,
            "model": {**model_info(model), **(info or {})},
            "classes": list(CLASSES),
            "busy_s": None if busy is None else round(time.monotonic() - busy, 3),
            "pending": worker.pending,
            "answered": worker.answered,
            "uptime_s": round(time.time() - started, 1),
            "limits": {"max_upload_bytes": max_upload_bytes, "timeout_s": timeout_s,
                       "max_faces_per_request": MAX_FACES_PER_REQUEST, "max_pending": max_pending},
        })

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        return_landmarks = flag(request, "landmarks")
        all_faces = flag(request, "all_faces")
        if kind == "application/json" or kind.endswith("+json"):
            body = await read_body(request, max_upload_bytes)
            landmarks, size = landmarks_request(body)
            del body
            faces = await worker.run(lambda: model.predict_landmarks(landmarks, size, return_landmarks=return_landmarks),
                                     timeout_s)
            return faces_response(faces)
        if kind == "multipart/form-data":
            data = multipart_file(await read_body(request, max_upload_bytes), content_type)
        elif kind.startswith(IMAGE_TYPES):
            data = await read_body(request, max_upload_bytes)
        else:
            shown = f"Content-Type {kind!r}" if kind else "no Content-Type"
            raise HTTPProblem(415, f"{shown}: send an image (Content-Type image/*, or multipart/form-data with a "
                                   f"file field: curl -F file=@photo.jpg) or landmarks as application/json")
        if not data:
            raise HTTPProblem(422, "empty upload: no image bytes received")
        await asyncio.to_thread(check_image, data)  # a bad image never waits in the model's queue
        faces = await worker.run(lambda: model.predict_image_bytes(data, all_faces=all_faces,
                                                                   return_landmarks=return_landmarks), timeout_s)
        return faces_response(faces)

    @app.exception_handler(FacePhiError)
    async def user_error(request: Request, exc: FacePhiError) -> JSONResponse:  # noqa: ARG001
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # noqa: ARG001
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    return app
