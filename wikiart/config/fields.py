"""The configuration machinery: dataclasses with flag metadata -> argparse, YAML, validation.

Every command (shard builder, train, evaluate, predict) describes its options as dataclasses
whose fields carry their help text. `parse_config` turns those into an argparse parser with
one flag per field (`image_size` -> `--image-size`), applies layers in a fixed order

    dataclass defaults < task preset < YAML file (--config) < explicit command-line flags

and validates the result, so a later feature adds a field, never a parser. Unknown flags,
values of the wrong type and out-of-range numbers are errors that name the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag or key."""


def opt(default: Any, help: str, *, choices: Sequence[Any] | None = None, min: float | None = None,
        exclusive_min: bool = False, flag: str | None = None, nargs: str | None = None) -> Any:
    """A dataclass field with command-line metadata.

    `min` with `exclusive_min=True` means value > min (e.g. a learning rate), else value >= min.
    """
    meta = {"help": help, "choices": choices, "min": min, "exclusive_min": exclusive_min,
            "flag": flag, "nargs": nargs}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True); `int` -> (int, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _scalar_parser(tp: Any, optional: bool):
    base = {int: int, float: float, str: str, bool: _bool}.get(tp)
    if base is None:
        raise TypeError(f"unsupported config field type {tp!r}")
    if not optional:
        return base

    def parse(text: str):
        return None if text.strip().lower() in ("none", "null", "") else base(text)
    parse.__name__ = base.__name__
    return parse


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """Add one flag per field of `cls`; defaults are SUPPRESSed so we can tell what was given."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = _field_types(cls)
    for field in dataclasses.fields(cls):
        if not field.metadata.get("help"):
            continue  # internal field, not exposed on the command line
        tp, optional = _unwrap_optional(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": field.metadata["help"] + _default_text(field)}
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (list, tuple):
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            kwargs.update(type=_scalar_parser(item, False), nargs=field.metadata.get("nargs") or "+")
        else:
            kwargs["type"] = _scalar_parser(tp, optional)
        if field.metadata.get("choices"):
            kwargs["choices"] = field.metadata["choices"]
        group.add_argument(flag_name(field), **kwargs)


def _default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f" (default: {field.default})"
    return ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a YAML or preset value against the field's annotation."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: may not be null")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def validate(obj: Any) -> None:
    """Check choices and numeric bounds of every field; raise ConfigError naming the flag."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        name = flag_name(field)
        choices = field.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
        low = field.metadata.get("min")
        if low is None or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            bad = v <= low if field.metadata.get("exclusive_min") else v < low
            if bad:
                rel = ">" if field.metadata.get("exclusive_min") else ">="
                raise ConfigError(f"{name}: must be {rel} {low}, got {v}")


def apply_values(obj: Any, values: Mapping[str, Any], source: str) -> Any:
    """A copy of the section `obj` with `values` checked and applied (sections may be frozen)."""
    hints = _field_types(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = [key for key in values if key not in names]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    return dataclasses.replace(obj, **{key: _coerce(value, hints[key], f"{source}: {key}")
                                       for key, value in values.items()})


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections or keys")
    return data


def _split_by_section(flat_or_nested: Mapping[str, Any], sections: Mapping[str, Any],
                      source: str) -> dict[str, dict[str, Any]]:
    """Accept `{data: {...}, model: {...}}` or flat `{image_size: 64}` and route keys to sections."""
    owner = {f.name: sec for sec, obj in sections.items() for f in dataclasses.fields(obj)}
    routed: dict[str, dict[str, Any]] = {sec: {} for sec in sections}
    for key, value in flat_or_nested.items():
        if key in sections and isinstance(value, Mapping):
            routed[key].update(value)
        elif key in owner:
            routed[owner[key]][key] = value
        else:
            raise ConfigError(f"{source}: unknown key {key!r}")
    return routed


def build_parser(sections: Mapping[str, type], description: str, prog: str | None = None,
                 with_config_file: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    seen: dict[str, str] = {}
    for sec, cls in sections.items():
        for f in dataclasses.fields(cls):
            if f.name in seen:
                raise TypeError(f"field {f.name!r} appears in sections {seen[f.name]} and {sec}")
            seen[f.name] = sec
        add_dataclass_arguments(parser, cls, title=sec)
    if with_config_file:
        parser.add_argument("--config", default=None, help="YAML file of overrides (sections or flat keys)")
    return parser


def parse_config(sections: Mapping[str, type], argv: Sequence[str] | None, description: str,
                 presets: Mapping[str, Mapping[str, Any]] | None = None, preset_key: str | None = None,
                 prog: str | None = None) -> dict[str, Any]:
    """Parse argv into one instance per section, applying presets, YAML and flags in order.

    `presets` maps a value of the field `preset_key` (e.g. task="style") to overrides.
    Errors exit through argparse (status 2) with a message naming the flag or key.
    """
    parser = build_parser(sections, description, prog=prog)
    ns = vars(parser.parse_args(argv))
    config_file = ns.pop("config", None)
    objs = {sec: cls() for sec, cls in sections.items()}
    try:
        yaml_values = _split_by_section(load_yaml(config_file), objs, f"--config {config_file}") \
            if config_file else {sec: {} for sec in objs}
        cli_values = _split_by_section(ns, objs, "command line")
        if presets and preset_key:
            key_value = _lookup(preset_key, cli_values, yaml_values, objs)
            preset = _split_by_section(presets.get(key_value, {}), objs, f"preset {key_value!r}")
            objs = {sec: apply_values(obj, preset[sec], f"preset {key_value!r}") for sec, obj in objs.items()}
        for sec, obj in objs.items():
            obj = apply_values(obj, yaml_values[sec], f"--config {config_file}")
            objs[sec] = apply_values(obj, cli_values[sec], "command line")
            validate(objs[sec])
    except ConfigError as exc:
        parser.error(str(exc))
    return objs


def _lookup(key: str, *layers: Mapping[str, Any]) -> Any:
    for layer in layers[:-1]:
        for values in layer.values():
            if key in values:
                return values[key]
    for obj in layers[-1].values():
        if hasattr(obj, key):
            return getattr(obj, key)
    return None


def to_dict(sections: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Resolved config as plain data (saved with every run)."""
    return {sec: dataclasses.asdict(obj) for sec, obj in sections.items()}


def from_dict(sections: Mapping[str, type], data: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Rebuild section objects from `to_dict` output, ignoring keys unknown to this version."""
    out = {}
    for sec, cls in sections.items():
        known = {f.name for f in dataclasses.fields(cls)}
        hints = _field_types(cls)
        values = {k: _coerce(v, hints[k], f"{sec}.{k}") for k, v in data.get(sec, {}).items() if k in known}
        out[sec] = cls(**values)
    return out


