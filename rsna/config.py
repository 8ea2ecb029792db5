"""Reading ``params.yaml`` sections into typed, validated settings.

Only stage scripts and the ``rsna`` command call this module. Each consumer defines a
frozen dataclass of its settings, and :func:`section_to_dataclass` turns the matching
``params.yaml`` section into it, rejecting unknown or missing keys by name.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    """A ``params.yaml`` file or section that is missing keys, has unknown keys or bad values."""


def load_params(path: str | os.PathLike = DEFAULT_PARAMS_FILE) -> dict[str, Any]:
    """Read a whole params file; raise :class:`ParamsError` when it is not a mapping."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except FileNotFoundError as error:
        raise ParamsError(f"params file {path} not found; pass --params FILE") from error
    except yaml.YAMLError as error:
        raise ParamsError(f"params file {path} is not valid YAML: {error}") from error
    if not isinstance(params, dict):
        raise ParamsError(f"params file {path} must contain a mapping of sections, got {params!r}")
    return params


def resolve_params_file(path: str | os.PathLike | None) -> Path | None:
    """Return the params file a command should read, or None for built-in defaults.

    An explicit path must exist. Without one, ``./params.yaml`` is used when present.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ParamsError(f"params file {path} not found")
        return path
    default = Path(DEFAULT_PARAMS_FILE)
    return default if default.is_file() else None


def load_section(path: str | os.PathLike, section: str) -> dict[str, Any]:
    """Return one top-level section of a params file as a dict."""
    params = load_params(path)
    if section not in params or not isinstance(params[section], dict):
        raise ParamsError(
            f"params file {path} has no mapping named {section!r}; sections found: {sorted(params)}"
        )
    return params[section]


def section_to_dataclass(cls: type[T], values: dict[str, Any], *, section: str) -> T:
    """Build the frozen dataclass ``cls`` from a params section, checking key names.

    Keys the dataclass does not define raise :class:`ParamsError`, because a typo such as
    ``learning_rate`` for ``lr`` would otherwise be ignored silently. Fields with a
    default may be left out. Lists become tuples, so the result is hashable.
    """
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ParamsError(
            f"params section {section!r} has unknown keys {unknown}; valid keys: {sorted(fields)}"
        )
    required = [
        name
        for name, field in fields.items()
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    missing = sorted(set(required) - set(values))
    if missing:
        raise ParamsError(f"params section {section!r} is missing keys {missing}")
    converted = {key: _freeze(value) for key, value in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as error:
        raise ParamsError(f"params section {section!r} is invalid: {error}") from error


def dataclass_to_section(settings: Any) -> dict[str, Any]:
    """Return a dataclass instance as a plain dict with lists, as YAML and JSON store it."""
    return {key: _thaw(value) for key, value in dataclasses.asdict(settings).items()}


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value
