"""Config dataclass <-> command-line flags <-> YAML, the same for every command.

Each field of a command's config dataclass is a flag (`foo_bar` -> `--foo-bar`); a YAML file
given with `--config` holds saved flags (its keys are field names). Precedence: the
dataclass default, then the YAML, then the flags actually typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) for `X | None` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _add_flag(parser: argparse.ArgumentParser, field: dataclasses.Field, hints: dict) -> None:
    tp, _ = _base_type(hints[field.name])
    flag = "--" + field.name.replace("_", "-")
    help_text = field.metadata.get("help", "")
    kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(tp)
    if tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif origin is Literal:
        parser.add_argument(flag, choices=typing.get_args(tp), **kwargs)
    elif origin is list:
        (item,) = typing.get_args(tp)
        parser.add_argument(flag, nargs="+", type=item, **kwargs)
    elif origin is dict:
        parser.add_argument(flag, type=json.loads, metavar="JSON", **kwargs)
    else:
        parser.add_argument(flag, type=tp, **kwargs)


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str = "",
                 default_config: str | None = None) -> T:
    """Build `cls` from defaults, then `--config` YAML (or `default_config`), then flags."""
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of saved flags (keys are field names)")
    for field in dataclasses.fields(cls):
        _add_flag(parser, field, hints)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config") or (default_config if not args else None)
    values = load_yaml(config_path, cls) if config_path else {}
    values.update(args)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def check_numbers(config: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                  fraction: tuple[str, ...] = ()) -> None:
    """Numeric flags in their range, said as the flag the user typed (a 0 for --max-pixels must stop at
    the command line, not in a worker's ZeroDivisionError)."""
    for names, ok, want in ((positive, lambda v: v > 0, "a number above 0"),
                            (non_negative, lambda v: v >= 0, "0 or more"),
                            (fraction, lambda v: 0 < v <= 1, "a fraction above 0, at most 1")):
        for name in names:
            value = getattr(config, name)
            if value is not None and not ok(value):
                raise ValueError(f"--{name.replace('_', '-')} takes {want}, not {value}")


def load_yaml(path: str | Path, cls: type) -> dict:
    """A YAML file's keys, checked against `cls`'s fields so a typo fails loudly."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"error: {path} must hold a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"error: unknown keys in {path}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return values


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
