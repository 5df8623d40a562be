"""Settings as dataclasses, with each value's flag, help text and valid range in one place.

A command's settings are a dataclass (subclassing `Settings`) whose fields are `option(...)`s; a field
whose type is itself a `Settings` dataclass becomes a titled group of options. From that one
description:

* `add_options(parser, cls)` generates the argparse options (groups, help texts with defaults);
* `from_args(cls, given)` builds the settings from the values given on the command line, the
  defaults (or a saved `base`, for a resumed run) filling in the rest;
* every settings object checks its values when it is made, so a value outside its range is refused
  before any work, with one line naming the flag and the valid range;
* `to_dict` / `from_dict` save settings with every output and read them back.

Flags are flat (`--latent`, not `--model.latent`): field names are unique across a command's groups.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from common.errors import UsageError


@dataclass(frozen=True)
class Range:
    """The valid values of a number: low/high bounds, each closed or open (None: unbounded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        def number(value) -> str:  # whole numbers in full (seeds reach 2^63 - 1), others as %g
            return str(value) if isinstance(value, int) else f"{value:g}"

        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {number(self.low)}"
        return f"{'<' if self.high_open else '<='} {number(self.high)}"


def at_least(low: float) -> Range:
    return Range(low=low)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


SEED_RANGE = Range(0, 2**63 - 1)  # seeds feed numpy's SeedSequence and torch's manual_seed


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, valid: Range | None = None,
           choices: tuple | None = None, parse: Callable[[str], Any] | None = None,
           show: Callable[[Any], str] | None = None, default_help: str | None = None,
           check: Callable[[Any], str | None] | None = None, metavar: str | None = None,
           positional: bool = False, group: str | None = None, nargs: str | None = None, const: Any = None) -> Any:
    """A settings field and everything the command line needs to know about it.

    flag: the option's name (default `--field-name`; a bool defaulting to True is switched off by it);
    valid / choices / check: what values are accepted (check returns what is wrong, or None);
    parse: turns the command-line text into the value (it raises UsageError naming the flag);
    show: how a value is written back as command-line text (help defaults, change reports);
    default_help: the default as words, where the value itself says little (e.g. None);
    group: the help section of a field of a flat settings class;
    const: the value of the flag given without one (`--compile` for `--compile yes`).
    """
    metadata = {"help": help, "flag": flag, "valid": valid, "choices": choices, "parse": parse, "show": show,
                "default_help": default_help, "check": check, "metavar": metavar, "positional": positional,
                "group": group, "nargs": nargs, "const": const}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Settings:
    """Base of every settings dataclass: values are checked when the object is made."""

    TITLE = ""  # the help section of a group of options

    def __post_init__(self):
        for f in dataclasses.fields(self):
            problem = field_problem(f, getattr(self, f.name))
            if problem:
                raise UsageError(problem)
        self.check()

    def check(self) -> None:
        """Checks that involve several values; raise UsageError naming the flags."""


def is_settings(kind) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind) and issubclass(kind, Settings)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def show_value(f: dataclasses.Field, value) -> str:
    """A value as it would be typed on the command line."""
    show = f.metadata.get("show")
    if show is not None and value is not None:
        return show(value)
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def field_problem(f: dataclasses.Field, value) -> str | None:
    """What is wrong with a value of a field, as one line naming the flag; None when it is fine."""
    if is_settings(type(value)) or not f.metadata:
        return None
    name = flag_of(f) if not f.metadata.get("positional") else f.name.upper()
    valid, choices, check = f.metadata.get("valid"), f.metadata.get("choices"), f.metadata.get("check")
    if value is None:
        return None if f.default is None else f"{name}: a value is needed"
    if value == "" or (isinstance(value, (list, tuple)) and "" in value):  # "" as a path is the current folder
        return f"{name} '': an empty value (an unset shell variable?); give the path or value meant"
    if valid is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
            return f"{name} {value!r}: must be a number {valid}"
        if value in (float("inf"), float("-inf")):  # a learning rate or a weight of inf ends in NaN losses
            return f"{name} {value!r}: must be a finite number {valid}"
        if value not in valid:
            return f"{name} {show_value(f, value)}: must be {valid}"
    if choices is not None and value not in choices:
        return f"{name} {value!r}: choose one of {', '.join(map(str, choices))}"
    if check is not None:
        problem = check(value)
        if problem:
            return f"{name} {show_value(f, value)}: {problem}"
    return None


# ------------------------------------------------------------------------------------------ parsers


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _help(f: dataclasses.Field, kind) -> str:
    text = f.metadata.get("help", "")
    if kind is bool or f.metadata.get("positional"):
        return text
    notes = []
    if f.metadata.get("default_help"):
        notes.append(f"default: {f.metadata['default_help']}")
    elif f.default is not MISSING and f.default is not None:
        notes.append(f"default: {show_value(f, f.default)}")
    if f.metadata.get("valid") is not None:
        notes.append(str(f.metadata["valid"]))
    return (f"{text} ({'; '.join(notes)})" if notes else text).replace("%", "%%")


def _section(parser: argparse.ArgumentParser, sections: dict, title: str):
    """The help section titled `title`, made on first use (several classes may share one)."""
    if title not in sections:
        sections[title] = parser.add_argument_group(title)
    return sections[title]


def add_options(parser: argparse.ArgumentParser, cls, group=None, exclude: tuple = (),
                sections: dict | None = None) -> None:
    """Add the options of a settings class (and of its nested groups) to a parser."""
    hints = _hints(cls)
    sections = {} if sections is None else sections
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        kind = hints[f.name]
        if is_settings(kind):
            add_options(parser, kind, _section(parser, sections, kind.TITLE) if kind.TITLE else None, exclude,
                        sections)
            continue
        section = f.metadata.get("group")
        target = _section(parser, sections, section) if section else group or parser
        kwargs: dict[str, Any] = {"help": _help(f, kind), "default": argparse.SUPPRESS}
        if kind is not bool and not f.metadata.get("positional") and not f.metadata.get("choices"):
            kwargs["metavar"] = f.metadata.get("metavar") or flag_of(f).lstrip("-").replace("-", "_").upper()
        if kind is bool:
            kwargs["action"] = "store_false" if f.default is True else "store_true"
            target.add_argument(flag_of(f), dest=f.name, **kwargs)
            continue
        origin = typing.get_origin(kind)
        if origin is list:
            kwargs["nargs"] = f.metadata.get("nargs") or "+"
            kwargs["type"] = str
        else:
            arguments = [a for a in typing.get_args(kind) if a is not type(None)]
            base = arguments[0] if origin is not None and arguments else kind
            kwargs["type"] = str if f.metadata.get("parse") or base not in (int, float) else base
        if f.metadata.get("choices") and not f.metadata.get("parse"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("const") is not None:
            kwargs.update(nargs="?", const=f.metadata["const"])
        if f.metadata.get("positional"):
            kwargs.pop("default")
            target.add_argument(f.name, **kwargs)
        else:
            required = f.default is MISSING and f.default_factory is MISSING
            target.add_argument(flag_of(f), dest=f.name, required=required, **kwargs)


def from_args(cls, given: dict, base=None):
    """Settings from the values given on the command line (`vars(namespace)` of a parser made by
    `add_options`); the rest from `base` when one is given, else the defaults."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if is_settings(kind):
            values[f.name] = from_args(kind, given, getattr(base, f.name) if base is not None else None)
        elif f.name in given:
            parse = f.metadata.get("parse")
            raw = given[f.name]
            values[f.name] = parse(raw) if parse is not None and raw is not None else raw
        elif base is not None:
            values[f.name] = getattr(base, f.name)
    return cls(**values)


def given_names(cls, given: dict) -> list[str]:
    """The fields of `cls` (nested groups included) that the command line gave."""
    names, hints = [], _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        names += given_names(kind, given) if is_settings(kind) else [f.name] * (f.name in given)
    return names


def all_fields(cls) -> dict[str, dataclasses.Field]:
    """Every leaf field of a settings class by name, nested groups included."""
    out, hints = {}, _hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        out.update(all_fields(kind) if is_settings(kind) else {f.name: f})
    return out


# ------------------------------------------------------------------------------------------ saving


def to_dict(settings) -> dict:
    """Plain JSON-ready values, nested groups as nested dicts."""
    return dataclasses.asdict(settings)


def from_dict(cls, data: dict):
    """Settings saved by `to_dict` (or by an earlier version that kept every value at the top level).
    Unknown keys are ignored, missing ones take their defaults; the values are checked as usual."""
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if is_settings(kind):
            nested = data.get(f.name)
            values[f.name] = from_dict(kind, nested if isinstance(nested, dict) else data)
        elif f.name in data:
            value = data[f.name]
            is_tuple = typing.get_origin(kind) is tuple or tuple in typing.get_args(kind)
            values[f.name] = tuple(value) if is_tuple and isinstance(value, list) else value
    return cls(**values)


def changed_values(cls, old: dict, new) -> list[str]:
    """`--flag old -> new` for every value of `new` that differs from the saved `old`."""
    try:
        saved = from_dict(cls, old) if isinstance(old, dict) else old
    except (UsageError, TypeError) as exc:  # saved by another version, with values this one refuses
        return [f"saved settings this version cannot read ({exc})"]
    changes = []
    for name, f in all_fields(cls).items():
        before, after = value_of(saved, name), value_of(new, name)
        if before != after:
            changes.append(f"{flag_of(f)} {show_value(f, before)} -> {show_value(f, after)}")
    return changes


def value_of(settings, name: str):
    """The value of a leaf field, looked up through nested groups."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if is_settings(type(value)):  # a group may share its name with a leaf (vae-train's data.data)
            try:
                return value_of(value, name)
            except KeyError:
                pass
        elif f.name == name:
            return value
    raise KeyError(name)


# ------------------------------------------------------------------------------------------ shared options

DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device_problem(value: str) -> str | None:
    return None if DEVICE_RE.fullmatch(str(value)) else "give auto, cpu, cuda or cuda:N"


def device_option() -> Any:
    """--device, the same in every command that computes with torch."""
    return option("auto", "where to compute: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda or "
                  "cuda:N", check=_device_problem)


def progress_option() -> Any:
    return option(True, "no progress bars", flag="--no-progress")


def verify_option() -> Any:
    return option(True, "do not check each shard's checksum before its first use (for sets already checked "
                  "with `synthgen verify`)", flag="--no-verify-shards")
