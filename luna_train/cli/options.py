"""Option parsing shared by the ``luna-train`` subcommands."""

from __future__ import annotations

import click

from luna_prep.luna16.tables import parse_subsets


def subsets_option(ctx, param, value):
    """click callback: ``0-7``, ``8``, ``0,2,5`` -> a tuple of subset numbers (None stays None)."""
    if value is None:
        return None
    try:
        return tuple(parse_subsets(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
