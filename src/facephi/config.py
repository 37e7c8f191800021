"""One config system: typed, validated settings dataclasses and the CLI flags derived from them.

Every command's settings are a dataclass deriving from :class:`Config`. Each field is declared
with :func:`setting`, which carries its help text and its constraints (choices, bounds, whether
"no limit" is allowed); from that one declaration come

* validation (:meth:`Config.validate`, run on construction and on every :meth:`Config.replace`):
  types, finite numbers, bounds and choices, with the field name (and its flag) in the message;
* the JSON round trip (:meth:`Config.to_dict` / :meth:`Config.from_dict`, nested configs included,
  unknown keys refused);
* the command-line flags (:func:`add_arguments`, :func:`from_args`): ``--field-name``, the type,
  the choices, ``--x / --no-x`` for booleans, the default in the help, and ``all`` as the one
  spelling of "no limit" for every limit.

This module imports neither torch nor any model code, so ``facephi CMD --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from facephi.utils.errors import FacePhiError

UNLIMITED = "all"
"""The one spelling of "no limit" on the command line (``--limit-train all``)."""

C = TypeVar("C", bound="Config")
_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    above: float | None = None,
    max: float | None = None,
    unlimited: bool = False,
    cli: bool = True,
    flag: str | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    positional: bool = False,
    nargs: int | str | None = None,
    default_factory: Callable[[], Any] | Any = _MISSING,
) -> Any:
    """A dataclass field with its help and constraints.

    ``min`` / ``max`` are inclusive bounds, ``above`` an exclusive lower bound; ``unlimited``
    allows ``None`` meaning "no limit" (``all`` on the command line); ``cli=False`` keeps the
    field off the command line; ``parse`` turns one command-line string into the value;
    ``positional`` makes it an argument without a flag; ``nargs`` takes several values (a list or
    tuple field; the bounds apply to each element).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "min": min,
                "above": above, "max": max, "unlimited": unlimited, "cli": cli, "flag": flag,
                "metavar": metavar, "parse": parse, "positional": positional, "nargs": nargs}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field) -> str:
    """The command-line flag of a field (``--limit-train`` for ``limit_train``)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dict(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed) of an annotation."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), len(rest) < len(args)
    return annotation, False


class Config:
    """Base of every settings dataclass (subclasses are ``@dataclass``)."""

    config_type: ClassVar[str | None] = None
    """Written as ``config_type`` into ``to_dict()`` when set (model configs)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # paths given as text become Paths
            value = getattr(self, field.name)
            if isinstance(value, str) and _base_type(_resolved_types(type(self))[field.name])[0] is Path:
                setattr(self, field.name, Path(value))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every field against its declaration, then :meth:`check`; FacePhiError on the first problem."""
        types = _resolved_types(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            self._check_field(field, types[field.name], value)
        self.check()

    def check(self) -> None:
        """Constraints between fields (subclasses override; raise :meth:`error`)."""

    def error(self, name: str, problem: str) -> FacePhiError:
        """A FacePhiError about field ``name``: ``lr (--lr): must be > 0, got nan``."""
        field = next((f for f in dataclasses.fields(self) if f.name == name), None)
        where = name
        if field is not None and field.metadata.get("cli", False) and not field.metadata.get("positional"):
            where = f"{name} ({flag_name(field)})"
        return FacePhiError(f"{where}: {problem}")

    def _check_field(self, field: dataclasses.Field, annotation: Any, value: Any) -> None:
        meta = field.metadata
        base, optional = _base_type(annotation)
        if value is None:
            if optional or meta.get("unlimited"):
                return
            raise self.error(field.name, "must be set")
        if base is bool:
            if not isinstance(value, bool):
                raise self.error(field.name, f"must be true or false, got {value!r}")
        elif base is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(field.name, f"must be a whole number, got {value!r}")
        elif base is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(field.name, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise self.error(field.name, f"must be a finite number, got {value}")
        elif base is str:
            if not isinstance(value, str):
                raise self.error(field.name, f"must be text, got {value!r}")
            if not meta.get("choices") and not value.strip() and not optional:
                raise self.error(field.name, "must not be empty")
        elif base is Path:
            if not isinstance(value, (str, Path)) or not str(value).strip():
                raise self.error(field.name, f"must be a path, got {value!r}")
        elif _is_dict(base) and not isinstance(value, dict):
            raise self.error(field.name, f"must be a mapping, got {value!r}")
        elif isinstance(base, type) and issubclass(base, Config) and not isinstance(value, base):
            raise self.error(field.name, f"must be a {base.__name__}, got {type(value).__name__}")
        elif typing.get_origin(base) in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise self.error(field.name, f"must be a list, got {value!r}")
            element = (typing.get_args(base) or (Any,))[0]
            for item in value:
                if element in (int, float) and (isinstance(item, bool) or not isinstance(item, (int, float))
                                                or not math.isfinite(item)):
                    raise self.error(field.name, f"must hold finite numbers, got {item!r}")
                self._check_bounds(field, item)
        self._check_bounds(field, value)
        choices = meta.get("choices")
        if choices and not isinstance(value, (list, tuple)) and value not in choices:
            raise self.error(field.name, f"must be one of {', '.join(map(str, choices))}; got {value!r}")

    def _check_bounds(self, field: dataclasses.Field, value: Any) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        low, above, high = field.metadata.get("min"), field.metadata.get("above"), field.metadata.get("max")
        if low is not None and value < low:
            raise self.error(field.name, f"must be >= {low:g}, got {value:g}")
        if above is not None and value <= above:
            raise self.error(field.name, f"must be > {above:g}, got {value:g}")
        if high is not None and value > high:
            raise self.error(field.name, f"must be <= {high:g}, got {value:g}")

    # ------------------------------------------------------------------ copies and JSON
    @classmethod
    def _refuse_unknown(cls, names: Any) -> None:
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FacePhiError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")

    @classmethod
    def build(cls: type[C], **values: Any) -> C:
        """``cls(**values)``, with unknown names refused in one line instead of a TypeError."""
        cls._refuse_unknown(values)
        return cls(**values)

    def replace(self: C, **changes: Any) -> C:
        """A validated copy with ``changes`` applied (unknown names are refused)."""
        self._refuse_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (nested configs as dicts, paths as strings, ``config_type`` first when set)."""
        out: dict[str, Any] = {"config_type": self.config_type} if self.config_type else {}
        for field in dataclasses.fields(self):
            out[field.name] = _plain(getattr(self, field.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str | None = None) -> C:
        """Rebuild (and validate) a config from :meth:`to_dict` output; ``source`` names the file in errors."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise FacePhiError(f"{where}expected a JSON object for {cls.__name__}, got {type(data).__name__}")
        data = dict(data)
        kind = data.pop("config_type", cls.config_type)
        if cls.config_type and kind != cls.config_type:
            raise FacePhiError(f"{where}config_type is {kind!r}, expected {cls.config_type!r}")
        types = _resolved_types(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise FacePhiError(f"{where}unknown {cls.__name__} field(s) {', '.join(unknown)}")
        for name, value in list(data.items()):
            base, _ = _base_type(types[name])
            if isinstance(base, type) and issubclass(base, Config) and isinstance(value, dict):
                data[name] = base.from_dict(value, source)
            elif base is Path and isinstance(value, str):
                data[name] = Path(value)
            elif base is float and isinstance(value, int) and not isinstance(value, bool):
                data[name] = float(value)
        try:
            return cls(**data)
        except TypeError as exc:
            raise FacePhiError(f"{where}{cls.__name__}: {exc}") from None
        except FacePhiError as exc:
            raise FacePhiError(f"{where}{exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def differences(old: dict[str, Any], new: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """``name old -> new`` for every key whose value differs (sorted), for "other settings" messages."""
    keys = sorted((set(old) | set(new)) - set(ignore))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ---------------------------------------------------------------------------- command line

def _number_parser(kind: type, unlimited: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if unlimited and text.strip().lower() == UNLIMITED:
            return None
        try:
            return kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            extra = f" or '{UNLIMITED}'" if unlimited else ""
            raise argparse.ArgumentTypeError(f"expected {what}{extra}, got {text!r}") from None
    parse.__name__ = kind.__name__
    return parse


def _optional_text(text: str) -> str | None:
    return None if text.strip().lower() == "none" else text


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type[Config], *,
                  only: Sequence[str] | None = None, exclude: Sequence[str] = (),
                  defaults: Config | None = None, default_note: str | None = None) -> None:
    """Add one flag per command-line field of ``cls`` (``only`` / ``exclude`` select fields).

    Flags default to "not given" (``argparse.SUPPRESS``), so :func:`from_args` applies only what the
    user typed on top of the defaults or a preset. The help shows the default of ``defaults`` (or
    of the field), or ``default_note`` (e.g. "from --preset") when given.
    """
    types = _resolved_types(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("cli", False) or field.name in exclude or (only is not None and field.name not in only):
            continue
        base, optional = _base_type(types[field.name])
        element = (typing.get_args(base) or (str,))[0] if typing.get_origin(base) in (list, tuple) else None
        if element is not None:
            base = element
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
        if meta.get("nargs") is not None:
            kwargs["nargs"] = meta["nargs"]
        help_text = meta["help"]
        if default_note is not None:
            help_text += "" if "default" in help_text else f" (default: {default_note})"
        else:
            default = getattr(defaults, field.name) if defaults is not None else field.default
            shown_already = "default" in help_text or (default is None and not meta.get("unlimited"))
            if default is not _MISSING and not callable(default) and not shown_already:
                shown = UNLIMITED if default is None and meta.get("unlimited") else default
                if base is bool:
                    shown = "on" if default else "off"
                help_text += f" (default: {shown})"
        kwargs["help"] = help_text.replace("%", "%%")
        if _is_dict(base):  # KEY=VALUE pairs, one flag each, merged into the default's dict
            kwargs["action"], kwargs["type"] = "append", meta.get("parse") or _key_value
        elif meta.get("parse") is not None:
            kwargs["type"] = meta["parse"]
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base in (int, float):
            kwargs["type"] = _number_parser(base, bool(meta.get("unlimited")))
        elif base is Path:
            kwargs["type"] = Path
        elif base is str and optional:
            kwargs["type"] = _optional_text
        if meta.get("choices") and base is not bool:
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        elif base in (int, float) and meta.get("unlimited"):
            kwargs["metavar"] = f"N|{UNLIMITED}"
        required = field.default is _MISSING and field.default_factory is _MISSING
        if meta.get("positional"):
            kwargs.pop("dest")
            kwargs.pop("default")
            parser.add_argument(field.name, **kwargs)
            continue
        if required:
            kwargs["required"] = True
            kwargs.pop("default")
        parser.add_argument(flag_name(field), **kwargs)


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (plain text when it is not JSON)."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def given(args: argparse.Namespace, cls: type[Config]) -> dict[str, Any]:
    """The fields of ``cls`` that the command line set (``KEY=VALUE`` lists become dicts)."""
    types_ = _resolved_types(cls)
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in vars(args):
            value = getattr(args, field.name)
            if _is_dict(_base_type(types_[field.name])[0]) and isinstance(value, list):
                value = dict(value)
            out[field.name] = value
    return out


def from_args(cls: type[C], args: argparse.Namespace, base: C | None = None, **extra: Any) -> C:
    """``base`` (or the defaults) with the flags given on the command line and ``extra`` applied.

    A ``KEY=VALUE`` dict flag adds to the base's dict instead of replacing it.
    """
    values = {**given(args, cls), **extra}
    if base is None:
        return cls.build(**values)
    for name, value in values.items():
        old = getattr(base, name)
        if isinstance(old, dict) and isinstance(value, dict):
            values[name] = {**old, **value}
    return base.replace(**values)
