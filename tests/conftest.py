"""Shared fixtures: tiny luna-patches stores written straight through the storage API."""

from __future__ import annotations

import os

import pytest

from luna_prep.synthetic.tiny_store import write_tiny_store

__all__ = ["write_tiny_store"]


@pytest.fixture
def tiny_store(tmp_path):
    """Path of a tiny store: 10 scans (one per subset), scales 16 and 24, 8 samples each."""
    return write_tiny_store(tmp_path / "tiny.zarr")


@pytest.fixture(autouse=True)
def _cards_out_of_the_repo(tmp_path, monkeypatch):
    """Builds run through the CLI write dataset cards; keep them in the test's temporary folder."""
    monkeypatch.setenv("LUNA_PREP_MANIFESTS_DIR", str(tmp_path / "manifests"))


TINY_RUN = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=24", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=8", "train.epochs=1", "optim.warmup_epochs=0", "logging.progress=false",
    "logging.plots=false",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, store): a one-epoch run trained through the CLI from the store's folder, with the
    dataset given as a relative path (subsets 0-7 train, 8 validates, 9 tests; 24^3 patches seen at 16^3)."""
    from click.testing import CliRunner

    from luna_train.cli.main import main

    work = tmp_path_factory.mktemp("training")
    store = write_tiny_store(work / "tiny.zarr")
    here = os.getcwd()
    os.chdir(work)
    try:
        args = ["run", "--dataset", "tiny.zarr", "--out", "run", "--train-subsets", "0-7", "--val-subsets", "8",
                "--test-subsets", "9", *[a for o in TINY_RUN for a in ("--set", o)]]
        res = CliRunner().invoke(main, args)
    finally:
        os.chdir(here)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return work / "run", store
