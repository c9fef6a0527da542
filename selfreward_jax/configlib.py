"""ml_collections ConfigDict → frozen dataclasses, at the edge (``main``).

``from_config(cls, cfg, "config.sft")`` builds ``cls`` from a ConfigDict (or dict), recursing into
dataclass-typed fields. Unknown keys, wrong types and invalid values raise ``ConfigError`` naming
the full key (``config.sft.train.batch_size``) and what is allowed. ``to_config`` goes back, so a
config file can start from the defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Union, get_args, get_origin


class ConfigError(ValueError):
  """A config key is unknown, mistyped or invalid; the message names the key."""


def _hints(cls) -> dict:
  return typing.get_type_hints(cls)


def _is_dataclass_type(t) -> bool:
  return isinstance(t, type) and dataclasses.is_dataclass(t)


def _describe(t) -> str:
  origin = get_origin(t)
  if origin is Union:
    return " or ".join(_describe(a) for a in get_args(t))
  if origin in (tuple, typing.Tuple):
    return "a tuple"
  if origin is typing.Literal:
    return "one of " + ", ".join(repr(a) for a in get_args(t))
  return getattr(t, "__name__", str(t))


def _convert(value: Any, t, key: str):
  origin = get_origin(t)
  if t is Any:
    return value
  if origin is Union:
    args = get_args(t)
    if value is None and type(None) in args:
      return None
    errors = []
    for a in args:
      if a is type(None):
        continue
      try:
        return _convert(value, a, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{key}={value!r}: expected {_describe(t)}")
  if origin is typing.Literal:
    if value not in get_args(t):
      raise ConfigError(f"{key}={value!r}: allowed values are {list(get_args(t))}")
    return value
  if origin in (tuple, typing.Tuple):
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
      raise ConfigError(f"{key}={value!r}: expected a tuple/list")
    args = get_args(t)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
      raise ConfigError(f"{key}={value!r}: expected {len(args)} items")
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))) \
        if args else tuple(value)
  if _is_dataclass_type(t):
    return from_config(t, value, key)
  if t is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{key}={value!r}: expected a number")
    return float(value)
  if t is int:
    if isinstance(value, bool) or not isinstance(value, int):
      if isinstance(value, float) and value.is_integer():
        return int(value)
      raise ConfigError(f"{key}={value!r}: expected an integer")
    return value
  if t is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{key}={value!r}: expected True or False")
    return value
  if t is str:
    if not isinstance(value, str):
      raise ConfigError(f"{key}={value!r}: expected a string")
    return value
  return value


def from_config(cls, cfg: Union[Mapping[str, Any], Any, None], key: str = "config"):
  """Builds dataclass ``cls`` from ``cfg`` (missing keys take the dataclass defaults)."""
  if cfg is None:
    return cls()
  if dataclasses.is_dataclass(cfg) and isinstance(cfg, cls):
    return cfg
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ConfigError(f"{key}: expected a section (dict), got {type(cfg).__name__}")
  hints = _hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(cfg) - set(fields))
  if unknown:
    raise ConfigError(f"{key}.{unknown[0]}: unknown key; allowed keys of {key}: {sorted(fields)}")
  kwargs = {name: _convert(value, hints[name], f"{key}.{name}") for name, value in cfg.items()}
  try:
    return cls(**kwargs)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{key}: {e}") from None


def to_config(obj) -> Any:
  """A dataclass (nested) as plain dicts/lists, for ConfigDict construction and run records."""
  if dataclasses.is_dataclass(obj):
    return {f.name: to_config(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
  if isinstance(obj, tuple):
    return [to_config(v) for v in obj]
  return obj
