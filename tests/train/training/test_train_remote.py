"""A second machine trains from a store built on the first: over HTTP, from a zip, through a card."""

from __future__ import annotations

import json

from click.testing import CliRunner
from test_train_run import TINY, _args

from luna_prep.sharing.cards import write_card
from luna_prep.sharing.pack import pack_store
from luna_train.cli.main import main

from http_server import serve_directory


def _train(dataset: str, out, *extra) -> dict:
    res = CliRunner().invoke(main, ["run", "--dataset", dataset, "--out", str(out), *extra, *_args(TINY),
                                    "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "summary.json").read_text())


def test_trains_from_a_store_served_over_http(tiny_store, tmp_path):
    local = _train(tiny_store, tmp_path / "local")
    with serve_directory(tiny_store) as (url, log):
        remote = _train(url, tmp_path / "remote")
        shard_reads = [p for p in log.paths() if "/c/" in p]
    assert shard_reads, "patches were not read over HTTP"
    # the same data and seed give the same model, wherever the store lives
    assert remote["val_dice"] == local["val_dice"] and remote["test_dice"] == local["test_dice"]


def test_trains_from_a_card_pointing_at_a_zip(tiny_store, tmp_path):
    card = write_card(tiny_store, "tiny", tmp_path / "manifests")
    packed = tmp_path / "elsewhere" / "tiny.zip"
    packed.parent.mkdir()
    pack_store(tiny_store, packed)
    summary = _train(str(card), tmp_path / "run", "--store-url", str(packed))
    assert 0.0 <= summary["val_dice"] <= 1.0
    # a store that does not match its card is refused
    other = tmp_path / "other.zip"
    from conftest import write_tiny_store

    pack_store(write_tiny_store(tmp_path / "other.zarr", seed=5), other)
    res = CliRunner().invoke(main, ["run", "--dataset", str(card), "--store-url", str(other), "--out",
                                    str(tmp_path / "bad"), *_args(TINY)])
    assert res.exit_code != 0 and "manifest.parquet" in res.output
