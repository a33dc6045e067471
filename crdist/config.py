"""Typed configuration: YAML files become frozen dataclasses, checked before any work starts.

Every error names the dotted key and where its value came from (the YAML file or a ``--set``
override), e.g. ``configs/demo.yaml: train.zero_stage: must be one of 0, 1, 2, 3 (got 4)``.

Each component owns its section as a small dataclass next to its code (``crdist/train/config.py``
and so on); a section may define ``validate()`` and raise :class:`InvalidValue` for values that
are well-typed but impossible. Each field is documented by the string literal right after it,
which ``crdist config`` reads (``crdist/config_reference.py``).

A file may extend another with a top-level ``base: PATH`` (relative to the file naming it): the
base is read first, recursively, and the file's own keys merge over it, mapping by mapping; a
list or a value replaces the base's. A key that came from a base names that file as its source.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from crdist.errors import CrdistError


class ConfigError(CrdistError, ValueError):
    """A configuration that cannot run; the message names the key and its source."""


class InvalidValue(ValueError):
    """Raised by a section's ``validate()``; ``key`` is relative to that section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise InvalidValue(key, message)


BASE_KEY = "base"


def load(cls: type, path: str | Path, overrides: typing.Sequence[str] = ()) -> Any:
    """Read ``path`` (YAML) and the files it extends, apply ``key.sub=value`` overrides, and build a
    checked ``cls``. ``base:`` is an ordinary field where ``cls`` declares one (a sweep file's study
    config), and names the file this one extends otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if BASE_KEY in {f.name for f in dataclasses.fields(cls)}:
        return from_dict(cls, _read_mapping(path), str(path), overrides)
    raw, origins = _read_extended(path, ())
    return from_dict(cls, raw, str(path), overrides, origins)


def from_dict(cls: type, raw: dict, source: str = "<dict>", overrides: typing.Sequence[str] = (),
              origins: dict[str, str] | None = None) -> Any:
    """Build a checked ``cls`` from ``raw`` (read from ``source``) with ``key.sub=value`` overrides;
    ``origins`` maps keys that came from elsewhere (a base file) to where."""
    raw = dict(raw)
    origins = dict(origins or {})
    for item in overrides:
        _apply_override(raw, item, origins)
    return _Builder(source, origins).build(cls, raw, "")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def _read_mapping(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _read_extended(path: Path, extended_by: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """``path``'s keys merged over those of its base (recursively), and the source of every key
    that came from a base. ``extended_by`` is the chain of files that led here, to refuse cycles."""
    raw = _read_mapping(path)
    if BASE_KEY not in raw:
        return raw, {}
    named = raw.pop(BASE_KEY)
    if not isinstance(named, str) or not named.strip():
        raise ConfigError(f"{path}: {BASE_KEY}: must be the path of the config file this one extends, "
                          f"got {_describe(named)}")
    base = Path(os.path.normpath(path.parent / named))
    if not base.is_file():
        raise ConfigError(f"{path}: {BASE_KEY}: {named}: no such config file (looked at {base})")
    chain = (*extended_by, path)
    if any(base.resolve() == earlier.resolve() for earlier in chain):
        loop = chain[[earlier.resolve() for earlier in chain].index(base.resolve()):]
        raise ConfigError(f"{path}: {BASE_KEY}: the files extend each other in a cycle: "
                          + " → ".join(str(p) for p in (*loop, base)))
    inherited, deeper = _read_extended(base, chain)
    origins = {}
    for key in _leaf_keys(inherited):
        if not _sets(raw, key):
            owner = next((deeper[p] for p in _prefixes(key) if p in deeper), f"{base} (base of {path})")
            origins[key] = owner
    return _merge(inherited, raw), origins


def _merge(base: dict, own: dict) -> dict:
    """``own`` over ``base``: mappings merge key by key; lists and values replace."""
    merged = dict(base)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _leaf_keys(mapping: dict, prefix: str = "") -> list[str]:
    """Dotted keys of every value in ``mapping`` that is not a non-empty mapping."""
    keys = []
    for key, value in mapping.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        keys += _leaf_keys(value, full) if isinstance(value, dict) and value else [full]
    return keys


def _sets(mapping: dict, key: str) -> bool:
    """Whether ``mapping`` gives ``key`` its value: the key itself, or a value (not a mapping) above it."""
    node: Any = mapping
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return not isinstance(node, dict)
        node = node[part]
    return True


def _prefixes(key: str) -> list[str]:
    """``a.b.c`` → ``a.b.c``, ``a.b``, ``a``: longest first, as the innermost source wins."""
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _apply_override(raw: dict, item: str, origins: dict[str, str]) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train.zero_stage=3")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {item}: {where} is a value, not a section")
        node[part] = child = dict(child)  # copy: never modify the caller's mapping
        node = child
    node[parts[-1]] = value
    for earlier in [k for k in origins if k.startswith((key + ".", key + "["))]:
        del origins[earlier]  # replaced: whatever was below this key came from elsewhere
    origins[key] = f"--set {item}"


class _Builder:
    def __init__(self, source: str, origins: dict[str, str]):
        self.source = source
        self.origins = origins

    def error(self, key: str, message: str) -> ConfigError:
        # The innermost override that covers this key is where the bad value came from.
        origin = self.source
        for prefix in sorted(self.origins, key=len, reverse=True):
            if key == prefix or key.startswith(prefix + ".") or key.startswith(prefix + "["):
                origin = self.origins[prefix]
                break
        return ConfigError(f"{origin}: {key}: {message}" if key else f"{origin}: {message}")

    def build(self, cls: type, raw: Any, prefix: str) -> Any:
        if not isinstance(raw, dict):
            raise self.error(prefix, f"must be a mapping (a section), got {_describe(raw)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in raw.items():
            full = f"{prefix}.{key}" if prefix else str(key)
            if key not in fields:
                raise self._unknown(full, str(key), fields, prefix)
            kwargs[key] = self.convert(hints[key], value, full)
        missing = [
            name
            for name, f in fields.items()
            if name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            full = f"{prefix}.{missing[0]}" if prefix else missing[0]
            raise self.error(full, "is required but missing")
        config = cls(**kwargs)
        validate = getattr(config, "validate", None)
        if validate is not None:
            try:
                validate()
            except InvalidValue as err:
                full = f"{prefix}.{err.key}" if prefix else err.key
                raise self.error(full, err.message) from None
        return config

    def _unknown(self, full: str, key: str, fields: dict, prefix: str) -> ConfigError:
        hint = difflib.get_close_matches(key, list(fields), n=1)
        where = f"section {prefix!r}" if prefix else "the top level"
        message = f"unknown key in {where}"
        if hint:
            message += f" (did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?)"
        message += f"; known keys: {', '.join(fields)}"
        return self.error(full, message)

    def convert(self, tp: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            errors = []
            for option in options:
                try:
                    return self.convert(option, value, key)
                except ConfigError as err:
                    errors.append(err)
            if len(options) == 1:
                raise errors[0]
            raise self.error(key, f"must be {' or '.join(_type_name(a) for a in args)}, got {_describe(value)}")
        if origin is Literal:
            if value in args and type(value) in {type(a) for a in args}:
                return value
            choices = ", ".join(str(a) for a in args)
            raise self.error(key, f"must be one of {choices} (got {value!r})")
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, key)
        if origin is list:
            if not isinstance(value, list):
                raise self.error(key, f"must be a list, got {_describe(value)}")
            return [self.convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise self.error(key, f"must be a mapping, got {_describe(value)}")
            return {str(k): self.convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
        else:
            raise TypeError(f"config type {tp!r} at {key} is not supported")
        raise self.error(key, f"must be {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is list:
        return "a list"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    return f"{kind.get(type(value), type(value).__name__)} ({value!r})"
