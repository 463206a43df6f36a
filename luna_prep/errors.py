"""The errors a user can cause and fix: each names the file, key or option at fault.

Both command lines turn a :class:`LunaError` into a one-line message and its ``exit_code``
(see :mod:`luna_prep.cli_common`); anything else that escapes a command is a bug and keeps its traceback.
Subclasses also derive from the built-in type they always were (``ValueError``, ``RuntimeError``), so
``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations


class LunaError(Exception):
    """A user-facing error; its message names the input at fault."""

    exit_code = 1


class InputError(LunaError, ValueError):
    """An input (table, store, run directory, option combination) that cannot be used as given."""


class UsageError(LunaError, ValueError):
    """A bad option or configuration value: a usage error (exit status 2, like click's)."""

    exit_code = 2
