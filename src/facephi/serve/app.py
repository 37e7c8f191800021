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

Privacy: a request body is read into memory, never into a file (a multipart form is parsed in memory
by python-multipart's streaming parser: Starlette's own parser spools uploads above 1 MB to a temporary
file); an image is decoded in memory, meshed, and dropped with the request; only its landmarks reach
the model. No body is logged.

Bounds: a body is size-checked while it arrives (413, before the rest is read) and must arrive within
the timeout (408); then everything else (parsing, decoding the image once, bounded by
``landmarks/images.py``, meshing, the model) runs in the model worker (:mod:`facephi.serve.worker`),
which admits at most ``max_pending`` requests until their work ends (503), answers them in turns and
drops the work of a request that timed out (504). Errors are JSON ``{"detail": "..."}``: the client's
faults 4xx (400, 408, 413, 415 not an image / JSON / form, 422 unreadable image, no face, malformed
landmarks), the server's 5xx with the reason logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from facephi import __version__
from facephi.labels import CLASSES
from facephi.serve.bodies import (MAX_FACES_PER_REQUEST, HTTPProblem, flag, landmarks_request, multipart_file,
                                  read_body)
from facephi.serve.worker import MAX_PENDING, ModelWorker
from facephi.utils.errors import FacePhiError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
IMAGE_TYPES = ("image/", "application/octet-stream")
SHUTDOWN_WAIT_S = 60.0
"""Longest wait, when the server stops, for the model step under way (a torch call cannot be cut)."""
FACES_PER_STEP = 16
"""Faces of a landmark request answered in one turn of the model worker (one model batch)."""
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page and everything it loads come from this server; nothing is fetched from elsewhere."""


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


def server_fault(request: Request, exc: Exception) -> JSONResponse:
    """500 for what went wrong on the server's side, its reason logged: a :class:`FacePhiError` (the
    model refused what was checked as valid) says its one line, anything else its type."""
    if isinstance(exc, FacePhiError):
        logger.error("%s %s: 500 %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"server error: {exc}"}, status_code=500)
    logger.error("%s %s: 500 %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                 exc_info=(type(exc), exc, exc.__traceback__))
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def problem_response(exc: HTTPProblem) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)


def create_app(model: Any, max_upload_bytes: int = 5 * 2**20, timeout_s: float = 30.0, *,
               info: dict[str, Any] | None = None, max_pending: int = MAX_PENDING) -> FastAPI:
    """The FastAPI app serving ``model``.

    ``model`` is a :class:`facephi.serve.api.FacePhi` (or anything with its ``iter_predict``);
    ``max_upload_bytes`` bounds a request body (413); ``timeout_s`` bounds the arrival of a body (408)
    and the wait for the model, queue included (504); ``info`` is added to ``/health``'s model
    description; ``max_pending`` bounds the requests admitted to the model worker (503).
    """
    if max_upload_bytes <= 0 or not timeout_s > 0:
        raise ValueError("max_upload_bytes and timeout_s must be positive")
    worker = ModelWorker(max_pending)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        yield
        await asyncio.to_thread(worker.close, SHUTDOWN_WAIT_S)  # the current step ends before the process does

    app = FastAPI(title="FacePhi", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.worker = worker
    app.state.model = model

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s %s: %d %s", request.method, request.url.path, exc.status, exc.detail)
        return problem_response(exc)

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
            "dropped": worker.dropped,
            "uptime_s": round(time.time() - started, 1),
            "limits": {"max_upload_bytes": max_upload_bytes, "timeout_s": timeout_s,
                       "max_faces_per_request": MAX_FACES_PER_REQUEST, "max_pending": max_pending},
        })

    def landmark_steps(body: bytes, return_landmarks: bool) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        landmarks, size = landmarks_request(body)  # parsed here, in the model worker
        for start in range(0, len(landmarks), FACES_PER_STEP):
            chunk = landmarks[start:start + FACES_PER_STEP]
            yield (list(model.iter_predict([chunk], image_size=size, return_landmarks=return_landmarks)),
                   start + FACES_PER_STEP >= len(landmarks))

    def image_steps(body: bytes, content_type: str, all_faces: bool,
                    return_landmarks: bool) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        data = multipart_file(body, content_type) if content_type.lower().startswith("multipart/") else body
        del body
        if not data:
            raise HTTPProblem(422, "empty upload: no image bytes received")
        # decoded once, here: landmarks/images.py checks the header before decoding, at reduced size
        yield list(model.iter_predict([data], all_faces=all_faces, return_landmarks=return_landmarks)), True

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        kind = content_type.split(";")[0].strip().lower()
        return_landmarks = flag(request, "landmarks")
        all_faces = flag(request, "all_faces")
        if kind == "application/json" or kind.endswith("+json"):
            steps = landmark_steps(await read_body(request, max_upload_bytes, timeout_s), return_landmarks)
        elif kind == "multipart/form-data" or kind.startswith(IMAGE_TYPES):
            body = await read_body(request, max_upload_bytes, timeout_s)
            if not body:
                raise HTTPProblem(422, "empty upload: no image bytes received")
            steps = image_steps(body, content_type, all_faces, return_landmarks)
        else:
            shown = f"Content-Type {kind!r}" if kind else "no Content-Type"
            raise HTTPProblem(415, f"{shown}: send an image (Content-Type image/*, or multipart/form-data with a "
                                   f"file field: curl -F file=@photo.jpg) or landmarks as application/json")
        try:
            faces = await worker.run(steps, timeout_s)
        except HTTPProblem:
            raise
        except Exception as exc:  # noqa: BLE001 - the request was checked: the rest is the server's fault
            return server_fault(request, exc)
        return faces_response(faces)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return server_fault(request, exc)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SecurityHeaders)
    return app
