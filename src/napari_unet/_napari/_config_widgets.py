"""Widgets made from config options: the kind of widget, its choices, range, default, label
and tooltip all come from the option's description in :mod:`napari_unet.config`, so a widget
never retypes a default or a choice list."""

from __future__ import annotations

import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox

from ..config import Config, options_of

__all__ = ["option_widget", "option_value"]

AUTO = "auto"


def _text(value: Any) -> str:
    if value is None:
        return AUTO
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def option_widget(config: Config, name: str, **overrides: Any) -> Any:
    """The widget of option ``name`` of ``config`` (whose value it starts with)."""
    _field, opt, hint = options_of(type(config))[name]
    value = getattr(config, name)
    kw: dict[str, Any] = {"label": opt.label or name.replace("_", " "), "tooltip": opt.help}
    kw.update(overrides)
    if hint is bool:
        return CheckBox(value=bool(value), **kw)
    if opt.choices is not None:
        kw.setdefault("choices", list(opt.choices))
        return ComboBox(value=value, **kw)
    if hint is int:
        return SpinBox(value=value, min=int(opt.low if opt.low is not None else -10**9),
                       max=int(opt.high if opt.high is not None else 10**9), **kw)
    if hint is float:
        low = 0.0 if opt.low is None else float(opt.low)
        step = opt.widget_step or (10 ** -6 if value and abs(value) < 1e-3 else 1e-4)
        return FloatSpinBox(value=value, min=low,
                            max=float(opt.high if opt.high is not None else 1e9), step=step,
                            **kw)
    return LineEdit(value=_text(value), **kw)


def option_value(widget: Any, config_cls: type, name: str) -> Any:
    """The value a widget made by :func:`option_widget` holds, as the config takes it."""
    _field, opt, hint = options_of(config_cls)[name]
    value = widget.value
    if not isinstance(widget, LineEdit):
        return value
    text = str(value).strip()
    if opt.parse is not None:
        return opt.parse(text)
    if text.lower() in ("", AUTO) and type(None) in typing.get_args(hint):
        return None
    return text
