"""Robust image loading for the landmark pipeline: any readable image → 8-bit RGB array.

Every way an input file can be unusable maps to an :class:`ImageError` with a short, stable
``reason`` (counted in manifests) and a ``detail`` naming the specific problem.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 8
"""Images with a side shorter than this cannot contain a usable face."""

MAX_PIXELS = 400_000_000
"""Refuse to decode images larger than this (decompression bombs)."""


class ImageError(Exception):
    """An input image that cannot be used; ``reason`` is a short category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LoadedImage:
    """An image as 8-bit RGB, possibly downscaled; ``width``/``height`` are the original size."""

    rgb: np.ndarray  # uint8 [h, w, 3], h/w <= max_side
    width: int
    height: int


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit integer or float pixel arrays to 8 bits, preserving contrast."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        top = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(array) * (255.0 / top), 0, 255).astype(np.uint8)
    top = 65535 if int(array.max(initial=0)) > 255 else 255
    return np.clip(array.astype(np.float64) * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to an RGB uint8 array; transparency is composited over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(source: str | Path | bytes, max_side: int = 1280, name: str | None = None) -> LoadedImage:
    """Read an image file, or encoded image bytes (decoded in memory, never written anywhere), into
    RGB (EXIF orientation applied), downscaled so its longest side is ≤ ``max_side``.

    Raises :class:`ImageError` for missing, empty, non-image, truncated/corrupt, tiny or huge images;
    ``name`` names bytes in the messages.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
        if not data:
            raise ImageError("empty file", f"{name} has 0 bytes")
        return _decode(io.BytesIO(data), name, data[:8], max_side)
    path = Path(source)
    if not path.is_file():
        raise ImageError("missing file", f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ImageError("empty file", f"{path} has 0 bytes")
    with open(path, "rb") as fh:
        head = fh.read(8)
    return _decode(path, path.name, head, max_side)


def _decode(opened: Path | io.BytesIO, name: str, head: bytes, max_side: int) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError("image too large", f"{width}x{height} pixels")
                if min(width, height) < MIN_SIDE:
                    raise ImageError("image too small", f"{width}x{height} pixels")
                if max(width, height) > max_side and image.format == "JPEG":
                    image.draft("RGB", (max_side, max_side))  # fast DCT-domain downscale
                image.load()
                image = ImageOps.exif_transpose(image)
                if image.size != (width, height) and image.size[::-1] == (width, height):
                    width, height = height, width  # rotated by EXIF orientation
                rgb = _to_rgb(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        if head.startswith(_SIGNATURES):
            raise ImageError("corrupt image", f"{name} starts like an image but cannot be decoded") from None
        raise ImageError("not an image", f"{name} is not a readable image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError("image too large", str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt image", f"{name}: {exc}") from None
    if max(rgb.shape[:2]) > max_side:
        rgb = _downscale(rgb, max_side)
    return LoadedImage(rgb=np.ascontiguousarray(rgb), width=width, height=height)


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def _downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def crop_box(
    image: LoadedImage, box: tuple[float, float, float, float], margin: float
) -> LoadedImage:
    """Crop a face box ``(x, y, w, h)`` in original pixels, grown by ``margin`` × its size on each side.

    The box is clipped to the image; the result's ``width``/``height`` are the crop's size in original
    pixels (landmark fractions then refer to the crop).
    """
    x, y, w, h = box
    if not (w > 0 and h > 0):
        raise ImageError("invalid face box", f"box {box} has no area")
    x0 = max(0.0, x - margin * w)
    y0 = max(0.0, y - margin * h)
    x1 = min(float(image.width), x + w + margin * w)
    y1 = min(float(image.height), y + h + margin * h)
    if x1 - x0 < MIN_SIDE or y1 - y0 < MIN_SIDE:
        raise ImageError("invalid face box", f"box {box} lies outside the {image.width}x{image.height} image")
    sx = image.rgb.shape[1] / image.width
    sy = image.rgb.shape[0] / image.height
    rgb = image.rgb[round(y0 * sy) : round(y1 * sy), round(x0 * sx) : round(x1 * sx)]
    return LoadedImage(rgb=np.ascontiguousarray(rgb), width=round(x1 - x0), height=round(y1 - y0))
