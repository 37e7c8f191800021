"""Image loading is bounded: sizes are checked from the header before decoding, JPEGs decode at reduced
size, other formats are reduced right after decoding, 16-bit images get no full-size float copy; and the
result (orientation, contrast, size) is what a full decode would give."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facephi.landmarks.images import MAX_DECODED_PIXELS, ImageError, from_pil, load_image

SRC = Path(__file__).resolve().parents[1] / "src"


def write_png(path: Path, width: int, height: int, depth: int = 8, row=None) -> Path:
    """A greyscale PNG written row by row (never the whole image in memory): zeros, or ``row(y)`` bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    zeros = b"\x00" + bytes(width * depth // 8)
    packer = zlib.compressobj(9)
    body = bytearray()
    for y in range(height):
        body += packer.compress(zeros if row is None else b"\x00" + row(y))
    body += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", bytes(body)) + chunk(b"IEND", b""))
    return path


def peak_memory(path: Path) -> dict:
    """Load ``path`` in a fresh interpreter: its peak resident memory above the imports, in MB, and the outcome."""
    script = (
        "import json, resource, sys\n"
        "from facephi.landmarks.images import ImageError, load_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    image = load_image(sys.argv[1]); out = {'shape': list(image.rgb.shape), 'size': [image.width, image.height]}\n"
        "except ImageError as exc:\n"
        "    out = {'error': str(exc)}\n"
        "out['mb'] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("depth", [8, 16])
def test_decompression_bomb_refused_from_its_header(tmp_path, depth):
    bomb = write_png(tmp_path / f"bomb{depth}.png", 13000, 13000, depth)  # a few hundred KB of zeros
    assert bomb.stat().st_size < 600_000
    out = peak_memory(bomb)
    assert out["error"].startswith("image too large") and "13000x13000" in out["error"], out
    assert out["mb"] < 50, out  # refused before decoding (a full decode: 169 MB to several GB)


def test_sixteen_bit_image_without_float64_copies(tmp_path):
    width, height = 6000, 5000  # 30 Mpx, under MAX_DECODED_PIXELS: decoded at full size
    assert width * height <= MAX_DECODED_PIXELS
    rows = [np.full(width, value, dtype=">u2").tobytes() for value in (0, 20000, 65535)]
    path = write_png(tmp_path / "deep.png", width, height, 16, row=lambda y: rows[min(2, 3 * y // height)])
    out = peak_memory(path)
    assert "error" not in out and out["shape"] == [1067, 1280, 3] and out["size"] == [width, height], out
    assert out["mb"] < 200, out  # 60 MB decoded + one 60 MB array; float64 copies would add 240 MB each
    rgb = load_image(path).rgb
    assert rgb[5, 5, 0] == 0 and rgb[530, 5, 0] == round(20000 * 255 / 65535) and rgb[-5, 5, 0] == 255


def test_big_jpeg_decoded_at_reduced_size(tmp_path):
    width, height = 8000, 6000  # 48 Mpx: more than MAX_DECODED_PIXELS, but a JPEG decodes at 1/4
    script = ("import numpy as np, sys; from PIL import Image\n"
              f"a = np.zeros(({height}, {width}, 3), np.uint8); a[:, :, 0] = 200\n"
              "Image.fromarray(a).save(sys.argv[1], quality=80)\n")
    path = tmp_path / "big.jpg"
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=300)
    out = peak_memory(path)
    assert out.get("shape") == [960, 1280, 3] and out["size"] == [width, height], out
    assert out["mb"] < 120, out


def test_big_png_reduced_like_a_full_downscale(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    full = cv2.resize(small, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    Image.fromarray(full).save(tmp_path / "big.png")
    image = load_image(tmp_path / "big.png")
    expected = cv2.resize(full, (1280, 960), interpolation=cv2.INTER_AREA)
    assert image.rgb.shape == expected.shape and (image.width, image.height) == (4000, 3000)
    assert np.abs(image.rgb.astype(int) - expected).mean() < 1.5


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_as_pillow_applies_it(tmp_path, orientation, fmt):
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    Image.fromarray(pixels).save(path, fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    image = load_image(path)
    assert np.array_equal(image.rgb, expected)
    assert (image.width, image.height) == (expected.shape[1], expected.shape[0])


def test_pil_images_answer_as_by_path(tmp_path):
    values = np.linspace(0, 60000, 64 * 48, dtype=np.uint16).reshape(48, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    by_path = load_image(path)
    opened = Image.open(path)
    assert opened.mode.startswith("I;16")
    assert np.array_equal(from_pil(opened, name="deep").rgb, by_path.rgb)
    assert by_path.rgb.max() > 200  # 16-bit contrast kept, not clipped to white or black
    loaded = Image.open(io.BytesIO(path.read_bytes()))
    loaded.load()
    assert np.array_equal(from_pil(loaded).rgb, by_path.rgb)


def test_tiny_and_empty_refused():
    with pytest.raises(ImageError, match="image too small"):
        from_pil(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageError, match="image too small"):
        from_pil(Image.new("RGB", (4, 300)))
