"""The wheel works outside the checkout: it carries the shipped model and the web page, installs
beside the tested dependencies, and answers a photo from the command line and the Python API.

The wheel is built from a copy of the project files (pyproject.toml, README.md, LICENSE, src/) without
build isolation, then installed with ``pip --no-index`` into a new venv in a temporary folder. That
venv sees this interpreter's packages (torch, MediaPipe, the embedded SmolLM2 ...) through a folder of
links to them that leaves out every facephi entry, so nothing is downloaded, pip checks the wheel's
declared dependency ranges against the tested versions, and only the installed wheel can be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "images" / "happiness_1.jpg"
MODEL_FILES = ("config.json", "projector.safetensors", "adapter/adapter.safetensors", "encoder/config.json",
               "encoder/model.safetensors", "tokenizer/tokenizer.json")
PAGE_FILES = ("index.html", "app.js", "style.css", "vendor/vision_bundle.mjs", "vendor/vision_wasm_internal.js",
              "vendor/vision_wasm_internal.wasm", "vendor/face_landmarker.task")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("FACEPHI_MODEL", None)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel, install it into a fresh venv; returns the wheel, the venv's python and a work folder."""
    base = tmp_path_factory.mktemp("wheel")
    env = _clean_env()
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(source)], base, env)
    wheel = next(dist.glob("facephi-*.whl"))

    # The tested packages of this interpreter, facephi itself left out, as a folder of links.
    shared = base / "shared-site-packages"
    shared.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        lowered = entry.name.lower()
        if "facephi" in lowered or entry.suffix == ".pth":
            continue
        (shared / entry.name).symlink_to(entry)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base, env)
    python = venv / "bin" / "python"
    venv_site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          base, env).stdout.strip())
    (venv_site / "tested_packages.pth").write_text(f"{shared}\n")
    _run([str(python), "-m", "pip", "install", "--no-index", "-q", str(wheel)], base, env)
    work = base / "elsewhere"
    work.mkdir()
    shutil.copy2(PHOTO, work / PHOTO.name)
    return {"wheel": wheel, "python": python, "bin": venv / "bin", "work": work, "site": venv_site}


def test_wheel_carries_the_model_and_the_page(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    model = "facephi/models/facephi-smollm2-ferplus/"
    assert {model + f for f in MODEL_FILES} <= names
    assert {"facephi/serve/static/" + f for f in PAGE_FILES} <= names
    assert installed["wheel"].stat().st_size < 40 * 1024 * 1024
    model_bytes = sum(info.file_size for info in zipfile.ZipFile(installed["wheel"]).infolist()
                      if info.filename.startswith(model))
    assert model_bytes < 25 * 1024 * 1024


def test_installed_cli_answers_a_photo(installed):
    env = _clean_env()
    done = _run([str(installed["bin"] / "facephi"), "predict", PHOTO.name, "--json"], installed["work"], env)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(rows) == 1 and "error" not in rows[0], done.stdout + done.stderr
    assert rows[0]["input"].endswith(PHOTO.name) and rows[0]["predicted_class"] in rows[0]["scores"]


def test_installed_api_answers_a_photo_from_the_package(installed):
    script = (
        "import json, os, facephi\n"
        "from facephi import FacePhi\n"
        "from facephi.model.defaults import SHIPPED_MODEL\n"
        "model = FacePhi.from_pretrained()\n"
        f"faces = model.predict({PHOTO.name!r})\n"
        "print(json.dumps({'file': os.path.realpath(facephi.__file__), 'model': os.path.realpath(SHIPPED_MODEL), 'faces': faces}))\n"
    )
    done = _run([str(installed["python"]), "-c", script], installed["work"], _clean_env())
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    site = str(installed["site"].resolve())
    assert answer["file"].startswith(site), answer["file"]  # the installed wheel, not the checkout
    assert answer["model"].startswith(site), answer["model"]
    assert isinstance(answer["faces"], list) and len(answer["faces"]) == 1
    assert answer["faces"][0]["predicted_class"] in answer["faces"][0]["scores"]
