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
from PIL import Image, UnidentifiedImageError

MIN_SIDE = 8
"""Images with a side shorter than this cannot contain a usable face."""

MAX_PIXELS = 400_000_000
"""Refuse images whose header declares more pixels than this (read before any decoding)."""

MAX_DECODED_PIXELS = 36_000_000
"""Refuse to decode more pixels than this (about 6000 x 6000), counted after a JPEG's reduced-size
(DCT-domain) decoding: a small file cannot cost more than a few hundred MB of memory. A JPEG of up
to :data:`MAX_PIXELS` decodes at 1/2 to 1/8 of its size; other formats decode at full size."""


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


_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_REDUCIBLE_MODES = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F")
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _high_bit_to_rgb(image: Image.Image, top: float, max_side: int) -> np.ndarray:
    """A 16/32-bit integer or float grey image as RGB uint8 (``top``: the value that becomes 255),
    downscaled to ``max_side`` BEFORE the float conversion (no full-size float copy)."""
    grey = np.asarray(image)
    if grey.dtype not in (np.uint8, np.uint16, np.float32):
        grey = grey.astype(np.float32)
    grey = downscale(grey, max_side)
    small = np.nan_to_num(grey.astype(np.float32), nan=0.0, posinf=top, neginf=0.0)
    offset = 0.5 if grey.dtype.kind != "f" else 0.0
    small = np.clip(small * np.float32(255.0 / top) + np.float32(offset), 0, 255).astype(np.uint8)
    return np.repeat(small[:, :, None], 3, axis=2)


def _top(image: Image.Image) -> float:
    """The value of a high-bit grey image that maps to 255: floats up to 1 are unit range, integers
    beyond 255 16-bit range (read with ``getextrema``, without a copy of the pixels)."""
    high = image.getextrema()[1]
    if image.mode == "F":
        return 1.0 if high <= 1.0 else 255.0
    return 65535.0 if high > 255 else 255.0


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any 8-bit PIL mode to an RGB uint8 array; transparency is composited over white."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def check_size(width: int, height: int, what: str = "image") -> None:
    """Refuse an image by its declared size, before it is decoded: too small to hold a face, or
    more than :data:`MAX_PIXELS` pixels."""
    if width * height > MAX_PIXELS:
        raise ImageError("image too large", f"{what} is {width}x{height} pixels (at most {MAX_PIXELS:,})")
    if min(width, height) < MIN_SIDE:
        raise ImageError("image too small", f"{what} is {width}x{height} pixels (at least {MIN_SIDE} a side)")


def from_pil(image: Image.Image, max_side: int = 1280, name: str = "<image>") -> LoadedImage:
    """A PIL image (opened lazily or already loaded) as RGB, EXIF orientation applied, downscaled so its
    longest side is <= ``max_side``; the same size checks and bounded decoding as :func:`load_image`.

    The size is checked from the header before decoding; a JPEG is decoded at reduced size (``draft``),
    other formats are reduced by an integer factor right after decoding (``reduce``), before any
    conversion copy; 16-bit and float images never get a full-size float copy.
    """
    width, height = image.size
    check_size(width, height, name)
    if max(width, height) > max_side and image.format == "JPEG":
        image.draft(image.mode, (max_side, max_side))  # DCT-domain downscale while decoding
    decoded = image.size[0] * image.size[1]
    if decoded > MAX_DECODED_PIXELS:
        raise ImageError("image too large", f"{name} is {width}x{height} pixels: a {image.format or 'raw'} "
                         f"image cannot be decoded at reduced size, and at most {MAX_DECODED_PIXELS:,} pixels "
                         "are decoded at full size")
    image.load()
    orientation = image.getexif().get(0x0112, 1)  # after decoding: a PNG reads its EXIF after the pixels
    if image.mode in ("P", "PA", "1"):
        image = image.convert("RGBA" if image.mode != "1" else "L")  # averaging needs colours, not indices
    top = _top(image) if image.mode in _HIGH_BIT_MODES else 255.0
    factor = max(image.size) // max_side
    if factor >= 2 and image.mode in _REDUCIBLE_MODES:
        image = image.reduce(factor)  # box filter, before any conversion copy; stays >= max_side
    rgb = _high_bit_to_rgb(image, top, max_side) if image.mode in _HIGH_BIT_MODES else _to_rgb(image)
    if orientation in _ORIENTATIONS:
        rgb = _orient(rgb, orientation)
    if orientation in _TRANSPOSED:
        width, height = height, width
    return LoadedImage(rgb=np.ascontiguousarray(downscale(rgb, max_side)), width=width, height=height)


_ORIENTATIONS = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, k=-1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, k=1),
}
"""EXIF orientation -> the array operation of ``ImageOps.exif_transpose``."""


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an [H, W, C] array."""
    return _ORIENTATIONS[orientation](rgb)


def load_image(source: str | Path | bytes, max_side: int = 1280, name: str | None = None) -> LoadedImage:
    """Read an image file, or encoded image bytes (decoded in memory, never written anywhere), into
    RGB (EXIF orientation applied), downscaled so its longest side is ≤ ``max_side``; its size is
    checked from the header before decoding (see :func:`from_pil`).

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
                return from_pil(image, max_side, name)
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


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """``rgb`` (an [H, W] or [H, W, C] array) resized (area filter) so its longest side is <= ``max_side``;
    unchanged when it already is."""
    import cv2

    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


INTERPOLATIONS = ("nearest", "linear", "cubic", "lanczos")
"""Filters ``resample`` can enlarge an image with (OpenCV's INTER_NEAREST, _LINEAR, _CUBIC, _LANCZOS4)."""


def resample(rgb: np.ndarray, upscale: int | None, interpolation: str, blur: float) -> np.ndarray:
    """``rgb`` blurred (Gaussian, ``blur`` = sigma in its own pixels; 0: not) and then, when its longest
    side is below ``upscale``, enlarged with ``interpolation`` so that side is ``upscale``.

    Landmarks are fractions of the image, so this changes only what the mesh sees: the pixel noise of
    another resolution (the same face meshed from a sharper or blurrier image)."""
    import cv2

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    if blur > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigmaX=blur, borderType=cv2.BORDER_REFLECT)
    h, w = rgb.shape[:2]
    if upscale is None or max(h, w) >= upscale:
        return rgb
    scale = upscale / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    flag = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
            "lanczos": cv2.INTER_LANCZOS4}[interpolation]
    return cv2.resize(rgb, size, interpolation=flag)


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
