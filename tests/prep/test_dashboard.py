"""`luna-prep build --dashboard`: the Dask dashboard's address, or a clear line saying why there is none."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from luna_prep.cli import main
from luna_prep.cluster import dashboard_note, dashboard_problem
from luna_prep.synthetic.scans import synthesize


def _bokeh(monkeypatch, version: str | None):
    real = importlib.metadata.version

    def fake(name):
        if name != "bokeh":
            return real(name)
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake)


@pytest.mark.parametrize("version, ok", [(None, False), ("2.4.3", False), ("3.1.0", True), ("3.9.2", True)])
def test_dashboard_needs_bokeh_3_1(monkeypatch, version, ok):
    _bokeh(monkeypatch, version)
    problem = dashboard_problem()
    assert (problem is None) == ok
    if not ok:
        assert "bokeh>=3.1" in problem and "luna-patches[dashboard]" in problem and "building without it" in problem


def test_dashboard_note_names_the_link_or_the_reason(monkeypatch):
    client = SimpleNamespace(dashboard_link="http://127.0.0.1:8787/status")
    _bokeh(monkeypatch, "3.9.2")
    assert dashboard_note(client, local=True) == "Dask dashboard: http://127.0.0.1:8787/status"
    _bokeh(monkeypatch, None)
    # a local cluster reports a link even when it serves nothing: without bokeh here, say why instead
    assert dashboard_note(client, local=True).startswith("no Dask dashboard: it needs bokeh>=3.1")
    assert dashboard_note(client, local=False) == "Dask dashboard: http://127.0.0.1:8787/status"  # its own bokeh
    assert dashboard_note(SimpleNamespace(dashboard_link=None), local=False) == (
        "no Dask dashboard: the scheduler serves none")


@pytest.mark.slow
def test_build_prints_the_dashboard_or_why_not(tmp_path):
    data = synthesize(tmp_path / "luna16", n_scans=1, seed=5)
    res = CliRunner().invoke(main, ["build", "--data-root", str(data.root), "--subsets", "0", "--scales", "24",
                                    "--out", str(tmp_path / "p.zarr"),
                                    "--workers", "1", "--dashboard", "--quiet", "--no-card"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    problem = dashboard_problem()
    if problem is None:
        assert "Dask dashboard: http://" in res.stderr and "/status" in res.stderr
    else:
        assert problem in res.stderr


def test_workers_0_has_no_dashboard(tmp_path):
    data = synthesize(tmp_path / "luna16", n_scans=1, seed=5)
    res = CliRunner().invoke(main, ["build", "--data-root", str(data.root), "--subsets", "0", "--scales", "24",
                                    "--out", str(tmp_path / "p.zarr"),
                                    "--workers", "0", "--dashboard", "--quiet", "--no-card"])
    assert res.exit_code == 0 and "no Dask dashboard with --workers 0" in res.stderr
