"""The package follows the pipeline: no module imports a later step (landmarks → data → model → train →
eval → serve → pipelines → cli), and shared modules import none of the steps."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "facephi"
RANK = {"labels": 0, "utils": 0, "config": 0, "presets": 0, "scoring": 0, "__init__": 0, "landmarks": 1,
        "data": 2, "model": 3, "train": 4, "eval": 5, "serve": 6, "pipelines": 7, "cli": 8}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_no_module_imports_a_later_pipeline_step():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = "facephi." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        room = _room(module).removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.startswith("facephi.") and RANK[_room(name)] > RANK[room]:
                    wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_ranked():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert rooms == set(RANK)
