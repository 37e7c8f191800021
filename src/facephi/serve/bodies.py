"""Request bodies of ``facephi serve``: read in memory with a size limit while they arrive, then parsed
(JSON landmarks; multipart forms by python-multipart's streaming parser, in memory, never a file) off
the event loop, in the model worker. Every problem of a body is an :class:`HTTPProblem` (4xx)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
from fastapi import Request

from facephi.presets import NUM_LANDMARKS
from facephi.serve.config import check_image_size
from facephi.utils.errors import FacePhiError

MAX_FACES_PER_REQUEST = 64
"""Faces one JSON request may hold."""
MAX_FORM_PARTS = 16
"""Parts one multipart form may hold (a photo and a few fields); more get 422 at once."""
FILE_FIELDS = ("file", "image")
"""Form fields taken as the upload (else the first part with a file name)."""
LANDMARKS_FORMAT = ('expected JSON {"landmarks": [[x, y, z] x 478] or a list of those, "image_size": [W, H]} '
                    "with raw MediaPipe coordinates (x, y as fractions of the image)")
_CHUNK = 64 * 1024


class HTTPProblem(Exception):
    """A request that cannot be answered: HTTP ``status`` and a one-line ``detail`` for the client."""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.detail, self.extra = status, detail, extra


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, in memory; 413 as soon as it is known to exceed ``limit`` bytes (a declared
    Content-Length, else the bytes received so far), without reading the rest; 408 when it takes
    longer than ``timeout_s`` to arrive."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPProblem(400, f"bad Content-Length header {declared!r}") from None
        if size > limit:
            raise HTTPProblem(413, too_large(size, limit))
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HTTPProblem(413, too_large(None, limit))
    except TimeoutError:
        raise HTTPProblem(408, f"the body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


def too_large(size: int | None, limit: int) -> str:
    got = f" ({size / 2**20:.1f} MB)" if size is not None else ""
    return f"the upload is too large{got}: at most {limit / 2**20:g} MB (--max-upload-mb)"


def multipart_file(body: bytes, content_type: str) -> bytes:
    """The uploaded file of a ``multipart/form-data`` body, parsed in memory by python-multipart's
    streaming parser: the part named ``file`` (or ``image``), else the first part with a file name."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise HTTPProblem(422, "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    header = {"field": bytearray(), "value": bytearray()}
    ended = []

    def part_begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise HTTPProblem(422, f"more than {MAX_FORM_PARTS} parts in the multipart/form-data body")
        parts.append({"headers": {}, "data": bytearray(), "complete": False})

    def header_end() -> None:
        parts[-1]["headers"][bytes(header["field"]).strip().lower()] = bytes(header["value"]).strip()
        header["field"].clear()
        header["value"].clear()

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": lambda data, start, end: header["field"].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header["value"].extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1]["data"].extend(data[start:end]),
        "on_part_end": lambda: parts[-1].update(complete=True),
        "on_end": lambda: ended.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        for start in range(0, len(body), _CHUNK):
            parser.write(body[start:start + _CHUNK])
        parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        raise HTTPProblem(422, f"the multipart/form-data body is malformed ({exc})") from None
    if not ended or not all(part["complete"] for part in parts):
        raise HTTPProblem(422, "the multipart/form-data body is cut short or malformed")
    first_file = None
    for part in parts:
        options = parse_options_header(part["headers"].get(b"content-disposition", b""))[1]
        if options.get(b"name", b"").decode("latin-1") in FILE_FIELDS:
            return bytes(part["data"])
        if first_file is None and b"filename" in options:
            first_file = bytes(part["data"])
    if first_file is not None:
        return first_file
    raise HTTPProblem(422, "no file in the multipart/form-data body: send the image as a field named file "
                           "(curl -F file=@photo.jpg)")


def landmarks_request(body: bytes) -> tuple[np.ndarray, tuple[float, float] | None]:
    """(float32 [N, 478, 3] landmarks, image size or None) of a JSON body; 422 when malformed."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise HTTPProblem(422, f"the JSON is nested too deeply: {LANDMARKS_FORMAT}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(422, f"the body is not valid JSON ({exc}): {LANDMARKS_FORMAT}") from None
    if not isinstance(document, dict) or "landmarks" not in document:
        raise HTTPProblem(422, f"no \"landmarks\" field: {LANDMARKS_FORMAT}")
    unknown = sorted(set(document) - {"landmarks", "image_size"})
    if unknown:
        raise HTTPProblem(422, f"unknown field(s) {', '.join(map(repr, unknown))}: {LANDMARKS_FORMAT}")
    try:
        raw = np.asarray(document["landmarks"])
    except (ValueError, TypeError, RecursionError):
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
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in size)):
            raise HTTPProblem(422, f"image_size must be [W, H], two numbers, got {json.dumps(size)[:80]}")
        try:
            size = check_image_size(size)
        except FacePhiError as exc:
            raise HTTPProblem(422, str(exc)) from None
    return raw.astype(np.float32), size


def flag(request: Request, name: str) -> bool:
    """A query flag: absent, 0/false/no/off -> False; present, 1/true/yes/on -> True; else 422."""
    value = request.query_params.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise HTTPProblem(422, f"query parameter {name}={value!r}: expected 1 or 0")
