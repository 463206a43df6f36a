"""What both command lines share: the click group that reports user errors, ``--version``, option types.

A :class:`~luna_prep.errors.LunaError` escaping any command prints ``Error: <message>`` on stderr
and exits with its ``exit_code`` (1; 2 for usage errors such as a bad config key); a missing input
file exits 1 the same way. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import click

from luna_prep.errors import LunaError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


def as_click_error(exc: LunaError | FileNotFoundError) -> click.ClickException:
    """The click exception that reports ``exc`` in one line with its exit status."""
    message = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
    message = _without_worker_traceback(message)
    if getattr(exc, "exit_code", 1) == 2:
        return click.UsageError(message)
    return click.ClickException(message)


def _without_worker_traceback(message: str) -> str:
    """torch re-raises a DataLoader worker's error with the worker's whole traceback in its message
    ("Caught X in DataLoader worker process 0. Original Traceback ..."): keep the error's own last line."""
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    head, last = message.split("\n", 1)[0], message.rstrip().splitlines()[-1]
    where = head.split(" in ", 1)[1].rstrip(".") if " in " in head else "a worker"
    return f"{last.split(': ', 1)[-1]} (in {where})"


class LunaGroup(click.Group):
    """A click group whose commands report user errors without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (LunaError, FileNotFoundError) as exc:
            raise as_click_error(exc) from exc


def luna_group(prog_name: str):
    """``@click.group`` with :class:`LunaGroup`, ``-h/--help`` and ``--version`` (of the luna-patches package)."""

    def decorate(fn):
        fn = click.version_option(package_name="luna-patches", prog_name=prog_name, message="%(prog)s %(version)s")(fn)
        return click.group(cls=LunaGroup, context_settings=CONTEXT_SETTINGS)(fn)

    return decorate


# ---------------------------------------------------------------------------------------------
# option types: each rejects a bad value at parse time (exit status 2, naming the option)


def format_subsets(subsets: tuple[int, ...]) -> str:
    """``(0, 1, 2, 3, 7)`` -> ``"0-3,7"`` (what :func:`parse_subsets` reads back)."""
    runs: list[list[int]] = []
    for s in sorted(subsets):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


class SubsetsType(click.ParamType):
    """LUNA16 subsets: ``0-9``, ``3``, ``0,2,5`` or ``0-3,7`` -> a tuple of numbers in 0..9."""

    name = "subsets"

    def convert(self, value, param, ctx):
        from luna_prep.luna16.tables import parse_subsets

        if isinstance(value, tuple):
            return value
        try:
            return tuple(parse_subsets(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class NumberListType(click.ParamType):
    """Comma-separated numbers: ``48,64,96`` -> a sorted tuple of distinct ints (``count``: exactly that many,
    in the given order)."""

    def __init__(self, kind: type = int, minimum: float | None = None, count: int | None = None, example: str = ""):
        self.kind, self.minimum, self.count, self.example = kind, minimum, count, example
        self.name = f"{kind.__name__}-list"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            items = tuple(self.kind(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: expected comma-separated {self.kind.__name__}s, e.g. {self.example}", param, ctx)
        if self.count is not None and len(items) != self.count:
            self.fail(f"{value!r}: expected {self.count} comma-separated values, e.g. {self.example}", param, ctx)
        if not items:
            self.fail(f"{value!r}: expected at least one value, e.g. {self.example}", param, ctx)
        if self.minimum is not None and min(items) < self.minimum:
            self.fail(f"{value!r}: values must be >= {self.minimum:g}", param, ctx)
        return items if self.count is not None else tuple(sorted(set(items)))


class HuWindowType(NumberListType):
    """``LOW,HIGH`` in HU with LOW < HIGH."""

    def __init__(self):
        super().__init__(float, count=2, example="-1000,400")
        self.name = "low,high"

    def convert(self, value, param, ctx):
        lo, hi = super().convert(value, param, ctx)
        if not lo < hi:
            self.fail(f"{value!r}: LOW must be below HIGH, e.g. -1000,400", param, ctx)
        return (lo, hi)


def _as_text(value: Any) -> Any:
    """A dataclass default as a user would type it: tuples as comma lists (subsets as ranges)."""
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


class FieldDefaultOption(click.Option):
    """An option whose default is a dataclass field's, named ``module:Class.field`` and read on first use
    (so ``--help`` of the group stays quick and the default is written once, in the dataclass)."""

    def __init__(self, *args, field: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.field = field

    def get_default(self, ctx, call=True):
        module, _, attr = self.field.partition(":")
        cls_name, _, name = attr.partition(".")
        cls = getattr(importlib.import_module(module), cls_name)
        spec = {f.name: f for f in dataclasses.fields(cls)}[name]
        value = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        if isinstance(self.type, SubsetsType):
            return format_subsets(value)
        return _as_text(value)
