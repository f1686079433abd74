"""Experiment configs: load a ``get_config()`` file and apply ``--config.a.b=value`` overrides.

A config file is a Python file with a ``get_config(arg=None)`` function returning an
``ml_collections.ConfigDict`` (the big_vision shape; ``--config=FILE:arg`` passes ``arg``). The
returned config is **locked**: an override may only set a key that the file defines, and a value
must parse as the type of the value it replaces. A typo therefore fails loudly, naming the key,
instead of silently creating a new field that nothing reads.

Override values are parsed by the type of the field they replace:

========== ==================================================================================
bool       ``true/false``, ``1/0``, ``yes/no`` (any case)
int        ``int(text)``
float      ``float(text)`` (an int field given to a float is widened by ConfigDict)
str        the text as given (surrounding quotes, if any, are removed)
tuple/list a Python literal (``"(448, 768)"``, ``"[1,2]"``) or comma-separated items (``448,768``)
None       a Python literal if it parses as one, else the text; ``none`` clears a placeholder
========== ==================================================================================
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = [
    "apply_override",
    "load_config",
    "load_config_file",
    "parse_override_value",
    "split_config_args",
]

_CONFIG_FLAG = "--config"
_CONFIG_OVERRIDE_PREFIX = "--config."
_module_counter = itertools.count()

_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Imports ``path`` (``FILE`` or ``FILE:arg``) and returns its ``get_config([arg])``, locked.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file has no ``get_config`` or it does not return a ConfigDict.
    """
    arg = None
    file_path = path
    if not os.path.exists(file_path) and ":" in path:
        file_path, arg = path.rsplit(":", 1)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"--config: config file {file_path!r} does not exist.")
    module_name = f"_hfpl_config_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--config: cannot import {file_path!r} as a Python file.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ValueError(f"--config: {file_path!r} defines no get_config() function.")
    config = get_config(arg) if arg is not None else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(
            f"--config: get_config() in {file_path!r} returned {type(config).__name__}, "
            "expected ml_collections.ConfigDict."
        )
    config.lock()
    return config


def _strip_quotes(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _literal_or_text(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_sequence(text: str, key: str, kind: type) -> Any:
    stripped = text.strip()
    if stripped in ("", "()", "[]"):
        return kind()
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (list, tuple)):
        value = tuple(_literal_or_text(item.strip()) for item in stripped.split(","))
    return kind(value)


def parse_override_value(key: str, text: str, field_type: type | None) -> Any:
    """Parses the command-line ``text`` for config key ``key`` into a value of ``field_type``.

    Raises:
      ValueError: ``text`` cannot be read as ``field_type`` (the message names the key).
    """
    if text.strip().lower() == "none" and field_type is not str:
        return None
    if field_type is None:
        return _literal_or_text(text)
    if field_type is bool:
        word = text.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError(f"config key {key!r} expects a bool (true/false), found {text!r}.")
    if field_type is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config key {key!r} expects an int, found {text!r}.") from None
    if field_type is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config key {key!r} expects a float, found {text!r}.") from None
    if field_type is str:
        return _strip_quotes(text)
    if field_type in (tuple, list):
        return _parse_sequence(text, key, field_type)
    value = _literal_or_text(text)
    if not isinstance(value, field_type):
        raise ValueError(
            f"config key {key!r} expects {field_type.__name__}, found {text!r} "
            f"({type(value).__name__})."
        )
    return value


def _field_type(parent: ml_collections.ConfigDict, name: str) -> type | None:
    raw = parent._fields[name]  # noqa: SLF001 - the only way to see a placeholder's declared type
    if isinstance(raw, config_dict.FieldReference):
        return raw.get_type()
    if raw is None:
        return None
    return type(raw)


def apply_override(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Sets ``config.<dotted_key>`` from the command-line ``text`` (see the module docstring).

    Raises:
      ValueError: the key does not exist (the message names it and lists the keys that do), names a
        group instead of a value, or ``text`` does not parse as the field's type.
    """
    parts = dotted_key.split(".")
    if not all(parts):
        raise ValueError(f"malformed config key 'config.{dotted_key}'.")
    parent = config
    for depth, name in enumerate(parts):
        here = ".".join(["config", *parts[:depth]])
        if not isinstance(parent, ml_collections.ConfigDict):
            raise ValueError(f"unknown config key 'config.{dotted_key}': {here!r} is not a group.")
        if name not in parent:
            known = ", ".join(sorted(parent.keys()))
            raise ValueError(
                f"unknown config key 'config.{dotted_key}': {here!r} has no field {name!r} "
                f"(fields: {known})."
            )
        if depth < len(parts) - 1:
            parent = parent[name]
    name = parts[-1]
    if isinstance(parent[name], ml_collections.ConfigDict):
        raise ValueError(
            f"config key 'config.{dotted_key}' is a group; override its fields "
            f"({', '.join(sorted(parent[name].keys()))}) one by one."
        )
    value = parse_override_value(f"config.{dotted_key}", text, _field_type(parent, name))
    try:
        with (
            parent.ignore_type() if _field_type(parent, name) is None else contextlib.nullcontext()
        ):
            setattr(parent, name, value)
    except TypeError as error:
        raise ValueError(f"config key 'config.{dotted_key}': {error}") from None


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Splits ``argv`` into (``--config`` path, ``[(dotted_key, text)]`` overrides, other args).

    Accepts ``--config=FILE``, ``--config FILE``, ``--config.a.b=v`` and ``--config.a.b v``.
    """
    path = None
    overrides: list[tuple[str, str]] = []
    rest: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == _CONFIG_FLAG or arg.startswith(_CONFIG_FLAG + "="):
            if "=" in arg:
                path = arg.split("=", 1)[1]
            else:
                if index + 1 >= len(args):
                    raise ValueError("--config needs a file path.")
                index += 1
                path = args[index]
        elif arg.startswith(_CONFIG_OVERRIDE_PREFIX):
            body = arg[len(_CONFIG_OVERRIDE_PREFIX) :]
            if "=" in body:
                key, text = body.split("=", 1)
            else:
                if index + 1 >= len(args):
                    raise ValueError(f"{arg} needs a value (use {arg}=VALUE).")
                index += 1
                key, text = body, args[index]
            overrides.append((key, text))
        else:
            rest.append(arg)
        index += 1
    return path, overrides, rest


def load_config(
    path: str, overrides: Iterable[tuple[str, str]] | Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Loads the config file at ``path`` and applies ``overrides`` in order.

    Args:
      path: ``FILE`` or ``FILE:arg`` (``arg`` is passed to ``get_config``).
      overrides: ``(dotted_key, text)`` pairs, or ``"a.b=text"`` strings (with or without a leading
        ``config.``/``--config.``).

    Returns:
      The locked ``ConfigDict``.
    """
    config = load_config_file(path)
    for override in overrides:
        if isinstance(override, str):
            body = override
            for prefix in (_CONFIG_OVERRIDE_PREFIX, "config."):
                if body.startswith(prefix):
                    body = body[len(prefix) :]
            if "=" not in body:
                raise ValueError(f"override {override!r} has no '=VALUE'.")
            key, text = body.split("=", 1)
        else:
            key, text = override
        apply_override(config, key, text)
    return config
