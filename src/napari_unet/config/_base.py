"""The machinery shared by every config: options described once (default, choices, range,
help), checked on construction, documented, and turned into CLI flags and widgets from the
same description."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigError", "Config", "option", "parse_ints", "parse_floats", "voxel_size_of",
           "int_tuple", "options_of", "Option"]

T = TypeVar("T", bound="Config")


from ..errors import ConfigError  # noqa: E402


def parse_floats(text: str) -> tuple[float, ...] | None:
    """``"2,0.5,0.5"`` -> a tuple of floats; ``""`` / ``"auto"`` -> None."""
    text = str(text).strip().lower()
    if not text or text == "auto":
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"expected numbers like 2,0.5,0.5, got {text!r}") from err


def voxel_size_of(value: Any, name: str) -> tuple[float, ...] | None:
    """A voxel size option checked: None, or positive finite numbers."""
    if value is None:
        return None
    try:
        sizes = tuple(float(v) for v in (value if isinstance(value, (list, tuple))
                                          else (value,)))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be numbers (one per spatial axis), got {value!r}"
                          ) from err
    if not sizes or not all(0 < v < float("inf") for v in sizes):
        raise ConfigError(f"{name} must be positive numbers (one per spatial axis), got "
                          f"{value!r}")
    return sizes


def parse_ints(text: str) -> tuple[int, ...] | None:
    """``"64,128,128"`` or ``"64x128x128"`` -> a tuple; ``""`` / ``"auto"`` -> None (the one
    place shapes typed by a user are read: CLI flags and widget fields)."""
    text = str(text).strip().lower()
    if not text or text == "auto":
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(f"expected whole numbers like 64,128,128, got {text!r}") from err


def int_tuple(value: Any, name: str, length: int | None = None) -> tuple[int, ...] | None:
    """An int (broadcast), a sequence of ints or None, checked."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_ints(value)
        if value is None:
            return None
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * (length or 1)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a sequence of integers, got {value!r}") from err
    if length is not None and len(out) == 1:
        out = out * length  # one value for every axis
    if length is not None and len(out) != length:
        raise ConfigError(f"{name} must have {length} values (one per spatial axis), got {out}")
    return out


@dataclasses.dataclass(frozen=True)
class Option:
    """How one config field is described, checked and offered to a user."""

    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    open_low: bool = False  # low itself excluded
    open_high: bool = False
    flag: str | None = None  # CLI flag (default: --field-name)
    label: str | None = None  # widget label (default: the field name in words)
    cli: bool = True
    widget_step: float | None = None
    parse: Callable[[str], Any] | None = None  # CLI text -> value, where the type does not say


def option(default: Any = dataclasses.MISSING, help: str = "", *,
           default_factory: Any = dataclasses.MISSING, **describe: Any) -> Any:
    """A dataclass field with its :class:`Option` description in ``metadata["option"]``."""
    kw: dict[str, Any] = {"metadata": {"option": Option(help=help, **describe)}}
    if default_factory is not dataclasses.MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return dataclasses.field(**kw)


def options_of(cls: type) -> dict[str, tuple[dataclasses.Field, Option, Any]]:
    """Field, description and resolved type of every described field of a config class."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, f.metadata["option"], hints[f.name])
            for f in dataclasses.fields(cls) if "option" in f.metadata}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _type_text(opt: Option, hint: Any) -> str:
    if opt.choices is not None:
        return "{" + ", ".join(repr(c) for c in opt.choices) + "}"
    text = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return text


def document(cls: type) -> type:
    """Append a numpydoc Parameters section written from the fields' descriptions."""
    import textwrap

    lines = ["", "Parameters", "----------"]
    for name, (f, opt, hint) in options_of(cls).items():
        default = _default(f)
        text = opt.help if isinstance(default, Config) else f"{opt.help} Default: {default!r}."
        lines.append(f"{name} : {_type_text(opt, hint)}")
        lines.extend(textwrap.wrap(text, 92, initial_indent="    ", subsequent_indent="    "))
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls


def _check_option(name: str, value: Any, opt: Option, hint: Any) -> None:
    if opt.choices is not None:
        if value not in opt.choices:
            raise ConfigError(f"{name} must be one of {opt.choices}, got {value!r}")
        return
    if opt.low is None and opt.high is None:
        return
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer >= {opt.low:g}, got {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return  # e.g. "auto" of batch_size: checked by the class
    lo_ok = opt.low is None or (value > opt.low if opt.open_low else value >= opt.low)
    hi_ok = opt.high is None or (value < opt.high if opt.open_high else value <= opt.high)
    if not (lo_ok and hi_ok):
        lo = "" if opt.low is None else f"{'(' if opt.open_low else '['}{opt.low:g}"
        hi = "" if opt.high is None else f"{opt.high:g}{')' if opt.open_high else ']'}"
        if opt.high is None:
            what = f"> {opt.low:g}" if opt.open_low else f">= {opt.low:g}"
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        raise ConfigError(f"{name} must be in {lo or '(-inf'}, {hi}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base class: checks described options, round-trips through dict / JSON / YAML."""

    def __post_init__(self) -> None:
        for name, (_f, opt, hint) in options_of(type(self)).items():
            _check_option(name, getattr(self, name), opt, hint)
        self._check()

    def _check(self) -> None:
        """Checks beyond one field's description (cross-field rules, normalised values)."""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, Config):
                return v.to_dict()
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {unknown}; valid options are {sorted(names)}"
            )
        return cls(**dict(data))

    def replace(self: T, **changes: Any) -> T:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            import difflib

            hints = [m for u in unknown for m in difflib.get_close_matches(u, names, n=1)]
            hint = f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else ""
            raise ConfigError(
                f"{type(self).__name__}: unknown option(s) {unknown}{hint}; valid options are "
                f"{sorted(names)}"
            )
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write the config to ``path`` (``.json``, or ``.yaml``/``.yml``)."""
        path = Path(path)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True))
        else:
            path.write_text(self.to_json())

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """Read a config written by :meth:`save` (JSON or YAML)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} does not hold a mapping of options")
        return cls.from_dict(data)
