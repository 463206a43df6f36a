"""Every option of every command of both command lines, given a bad value: a usage error (exit status 2)
that names the option, never a traceback. The bad values are derived from the click parameter types."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from luna_prep.cli import main as prep_cli
from luna_prep.cli_common import HuWindowType, NumberListType, SubsetsType
from luna_train.cli.main import main as train_cli

HERE = Path(__file__)


def bad_values(param: click.Parameter) -> list[str]:
    """Values the parameter's type must reject (empty when any string is acceptable)."""
    t = param.type
    if getattr(param, "is_flag", False):
        return []
    if isinstance(t, HuWindowType):
        return ["400", "400,-1000", "a,b"]
    if isinstance(t, NumberListType):
        return ["x,y", "4"] if t.minimum else ["x,y"]
    if isinstance(t, SubsetsType):
        return ["0-12", "a", "3-1"]
    if isinstance(t, click.Choice):
        return ["no-such-choice"]
    if isinstance(t, (click.IntRange, click.FloatRange)):
        out = ["abc"]
        if t.min is not None:
            out.append(str(t.min - 1))
        if t.max is not None:
            out.append(str(t.max + 1))
        return out
    if t in (click.INT, click.FLOAT):
        return ["abc", "1.5x"]
    if isinstance(t, click.Path):
        out = []
        if t.exists:
            out.append(str(HERE.parent / "does-not-exist"))
        if not t.file_okay:
            out.append(str(HERE))
        if not t.dir_okay:
            out.append(str(HERE.parent))
        return out
    return []


def cases():
    for prog, group in (("luna-prep", prep_cli), ("luna-train", train_cli)):
        for name, cmd in sorted(group.commands.items()):
            for param in cmd.params:
                if param.name in ("help", "version"):
                    continue
                yield pytest.param(group, name, param.name, id=f"{prog} {name} {param.opts[0]}")


def _param(group, command, param_name) -> click.Parameter:
    return next(p for p in group.commands[command].params if p.name == param_name)


ALL = list(cases())
TYPED = [c for c in ALL if bad_values(_param(*c.values))]  # the rest take any text (names, URLs, --set) or are flags


def test_every_command_is_covered():
    assert {c.values[1] for c in ALL} == set(prep_cli.commands) | set(train_cli.commands)
    assert len(ALL) > 80


@pytest.mark.parametrize("group, command, param_name", TYPED)
def test_bad_value_is_a_usage_error_naming_the_option(group, command, param_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    param = _param(group, command, param_name)
    for value in bad_values(param):
        args = [command, value] if isinstance(param, click.Argument) else [command, param.opts[0], value]
        res = CliRunner().invoke(group, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        label = param.opts[0] if isinstance(param, click.Option) else param.make_metavar(click.Context(group))
        assert label.lower() in res.output.lower() or param.name.upper() in res.output, (args, res.output)
        assert "Traceback" not in res.output
        assert isinstance(res.exception, SystemExit), (args, res.exception)


def test_only_free_text_and_flags_lack_a_bad_value():
    untyped = [_param(*c.values) for c in ALL if c not in TYPED]
    assert all(getattr(p, "is_flag", False) or p.type.name in ("text", "path") for p in untyped)
    assert len(TYPED) >= 0.6 * len(ALL), len(TYPED)
