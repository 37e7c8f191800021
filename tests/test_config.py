"""The config system: validation from field declarations, JSON round trips, CLI flags derived from fields."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import pytest

from facephi.config import UNLIMITED, Config, add_arguments, differences, from_args, given, setting
from facephi.eval.config import EvalConfig
from facephi.landmarks.extract import ExtractConfig
from facephi.pipelines.config import DemoConfig, ReproduceConfig
from facephi.serve.config import PredictConfig
from facephi.train.config import AlignConfig, TrainCommand, TrainConfig
from facephi.utils.errors import FacePhiError


@dataclasses.dataclass
class Inner(Config):
    size: int = setting(3, min=1, help="a size")


@dataclasses.dataclass
class Example(Config):
    path: Path = setting(help="a path")
    rate: float = setting(0.5, above=0, max=1, help="a rate")
    limit: int | None = setting(None, min=1, unlimited=True, help="a limit")
    mode: str = setting("a", choices=("a", "b"), help="a mode")
    flag: bool = setting(False, help="a flag")
    options: dict = setting(default_factory=dict, flag="--option", help="options")
    sizes: list[float] | None = setting(None, nargs=2, above=0, help="two sizes")
    inner: Inner = setting(default_factory=Inner, cli=False, help="nested")


@pytest.mark.parametrize("changes, message", [
    ({"rate": math.nan}, "rate (--rate): must be a finite number, got nan"),
    ({"rate": math.inf}, "rate (--rate): must be a finite number"),
    ({"rate": 0.0}, "rate (--rate): must be > 0, got 0"),
    ({"rate": 2.0}, "rate (--rate): must be <= 1, got 2"),
    ({"limit": 0}, "limit (--limit): must be >= 1, got 0"),
    ({"limit": 2.5}, "limit (--limit): must be a whole number"),
    ({"mode": "c"}, "mode (--mode): must be one of a, b; got 'c'"),
    ({"flag": "yes"}, "flag (--flag): must be true or false"),
    ({"sizes": [1.0, math.nan]}, "sizes (--sizes): must hold finite numbers"),
    ({"sizes": [1.0, -1.0]}, "sizes (--sizes): must be > 0"),
    ({"options": "x"}, "options (--option): must be a mapping"),
])
def test_validation_names_the_field_and_flag(changes, message):
    with pytest.raises(FacePhiError) as info:
        Example(path=Path("x"), **changes)
    assert str(info.value).startswith(message)
    with pytest.raises(FacePhiError, match="unknown setting"):
        Example(path=Path("x")).replace(rat=1)


def test_json_round_trip_and_unknown_keys():
    example = Example(path="data", limit=None, inner=Inner(size=5))
    assert example.path == Path("data")  # text becomes a Path
    data = example.to_dict()
    assert data["path"] == "data" and data["inner"] == {"size": 5}
    assert Example.from_dict(data) == example
    with pytest.raises(FacePhiError, match=r"unknown Example field\(s\) gone, old_rate"):  # no renamed keys
        Example.from_dict({"path": "data", "old_rate": 0.25, "gone": 1})
    with pytest.raises(FacePhiError, match=r"run.json: unknown Example field\(s\) typo"):
        Example.from_dict({"path": "p", "typo": 1}, source="run.json")
    with pytest.raises(FacePhiError, match="run.json: size .* must be >= 1"):
        Example.from_dict({"path": "p", "inner": {"size": 0}}, source="run.json")
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b 2 -> 3", "c None -> 4"]


def test_flags_are_derived_from_the_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    args = parser.parse_args(["--path", "p", "--limit", UNLIMITED, "--flag", "--option", "k=[1,2]",
                              "--option", "name=text", "--sizes", "3", "4"])
    assert given(args, Example) == {"path": Path("p"), "limit": None, "flag": True,
                                    "options": {"k": [1, 2], "name": "text"}, "sizes": [3.0, 4.0]}
    config = from_args(Example, args)
    assert config.limit is None and config.rate == 0.5 and config.options == {"k": [1, 2], "name": "text"}
    base = Example(path=Path("b"), rate=0.1, options={"k": 0, "keep": 1})
    merged = from_args(Example, args, base=base)
    assert merged.rate == 0.1 and merged.options == {"k": [1, 2], "keep": 1, "name": "text"}
    assert "--inner" not in parser.format_help()  # cli=False
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--limit", "lots"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--path", "p", "--mode", "c"])


@pytest.mark.parametrize("cls", [AlignConfig, TrainConfig, TrainCommand, EvalConfig, PredictConfig, ExtractConfig,
                                 ReproduceConfig, DemoConfig])
def test_every_command_config_has_help_and_a_flag_per_setting(cls):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    text = parser.format_help()
    for field in dataclasses.fields(cls):
        assert field.metadata.get("help"), (cls.__name__, field.name)
        if field.metadata.get("cli") and not field.metadata.get("positional"):
            assert (field.metadata.get("flag") or "--" + field.name.replace("_", "-")) in text


def test_threads_and_limits_mean_the_same_everywhere():
    for cls in (AlignConfig, TrainConfig, EvalConfig, PredictConfig, ReproduceConfig, DemoConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        assert "threads" in names and "num_threads" not in names, cls
        for field in dataclasses.fields(cls):
            if field.name.startswith("limit") and field.name != "limit_policy":
                assert field.metadata["unlimited"], (cls, field.name)
    assert {f.name: f.metadata["choices"] for f in dataclasses.fields(AlignConfig)}["lr_schedule"] == \
        {f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig)}["lr_schedule"]


def test_presets_live_in_one_registry():
    cpu = AlignConfig.for_preset("cpu", data="d", out="o", epochs=3, encoder_options={"point_embedding": True})
    assert cpu.encoder == "pointmlp-elite" and cpu.epochs == 3
    assert cpu.encoder_options == {"k_neighbors": [8, 8, 8, 8], "point_embedding": True}
    assert AlignConfig.for_preset("paper", data="d", out="o") == AlignConfig(data="d", out="o")
    with pytest.raises(FacePhiError, match="unknown encoder preset 'gpu'; choose one of paper, cpu, demo"):
        AlignConfig.for_preset("gpu", data="d", out="o")
    reproduction = ReproduceConfig.for_preset("cpu", data="d", out="o")
    assert reproduction.eval_limit == 1000 and ReproduceConfig.for_preset("paper", data="d", out="o").eval_limit is None
    assert reproduction.stage_config(1).limit_train == 2000 and reproduction.encoder_config("align").epochs == 2
    with pytest.raises(FacePhiError, match=r"stage_options \(--stage-option\): lr \(--lr\): must be > 0"):
        ReproduceConfig(data="d", out="o", stage_options={"lr": 0})


def test_old_key_names_are_refused_not_renamed():
    old = {"stage": 2, "num_threads": 2, "scheduler": "linear", "max_length": 128, "lr": 1e-4}
    with pytest.raises(FacePhiError, match=r"run.json: unknown TrainConfig field\(s\) max_length, num_threads, "
                                           "scheduler"):
        TrainConfig.from_dict(old, source="run.json")
    assert not hasattr(TrainConfig, "LEGACY_KEYS")


def test_registry_names_are_defined_once_in_presets():
    """ENCODERS, OBJECTIVES, the PointMLP and stage presets: one definition, in facephi.presets."""
    import re
    from pathlib import Path

    import facephi
    from facephi import presets

    root = Path(facephi.__file__).parent
    for name in ("ENCODERS", "OBJECTIVES", "POINTMLP_PRESETS", "STAGE_PRESETS", "_PRESETS", "PRESETS", "NUM_LANDMARKS",
                 "LEGACY_KEYS"):
        pattern = re.compile(rf"^\s*{name}\s*(:[^=]+)?=", re.MULTILINE)
        where = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
        assert where == (["presets.py"] if hasattr(presets, name) else []), (name, where)
    assert presets.ENCODERS == tuple(presets.POINTMLP_PRESETS) + tuple(presets.LANDMARK_MLP_PRESETS)
    assert presets.NUM_LANDMARKS == 478
