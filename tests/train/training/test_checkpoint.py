"""Checkpoint schema: what save writes, and a clear CheckpointError for every file load cannot use."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from luna_train.training.checkpoint import (
    BEST,
    CHECKPOINT_KEYS,
    CHECKPOINT_KIND,
    CHECKPOINT_VERSION,
    LAST,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    to_plain,
)


def _payload() -> dict:
    payload = {k: {} for k in CHECKPOINT_KEYS}
    payload.update(model={"w": torch.arange(6.0).reshape(2, 3)}, state={"epoch": 3, "hist": np.array([1, 2], np.int16)},
                   world_size=1)
    return payload


def _raw(path) -> dict:
    return torch.load(path, weights_only=True)


def _error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "weights_only" not in msg
    return msg


def test_round_trip_stamps_kind_and_version(tmp_path):
    save_checkpoint(tmp_path / LAST, _payload())
    raw = _raw(tmp_path / LAST)
    assert raw["kind"] == CHECKPOINT_KIND and raw["version"] == CHECKPOINT_VERSION == 1
    ckpt = load_checkpoint(tmp_path / LAST)
    assert torch.equal(ckpt["model"]["w"], torch.arange(6.0).reshape(2, 3))
    hist = ckpt["state"]["hist"]
    assert isinstance(hist, np.ndarray) and hist.dtype == np.int16 and hist.tolist() == [1, 2]


def test_save_refuses_a_payload_missing_schema_keys(tmp_path):
    payload = _payload()
    del payload["sampler"]
    with pytest.raises(ValueError, match="sampler"):
        save_checkpoint(tmp_path / LAST, payload)
    assert not (tmp_path / LAST).exists()


def test_empty_file(tmp_path):
    (tmp_path / LAST).write_bytes(b"")
    msg = _error(tmp_path / LAST)
    assert "empty file" in msg and BEST in msg and "afresh" in msg


def test_truncated_file(tmp_path):
    save_checkpoint(tmp_path / BEST, _payload())
    data = (tmp_path / BEST).read_bytes()
    (tmp_path / BEST).write_bytes(data[: len(data) // 2])
    msg = _error(tmp_path / BEST)
    assert "truncated" in msg and LAST in msg


def test_a_real_sized_checkpoint_cut_anywhere_is_a_checkpoint_error(tmp_path):
    """torch's zip reader calls many cuts of a larger file an OSError (EINVAL): a traceback, not this error."""
    payload = _payload()
    payload["model"] = {"w": torch.arange(16384.0)}  # 64 KiB of weights, as a small network's best.pt
    save_checkpoint(tmp_path / BEST, payload)
    data = (tmp_path / BEST).read_bytes()
    for cut in range(1000, len(data), len(data) // 25):
        (tmp_path / BEST).write_bytes(data[:cut])
        assert str(tmp_path / BEST) in _error(tmp_path / BEST)


def test_random_bytes(tmp_path):
    (tmp_path / LAST).write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    msg = _error(tmp_path / LAST)
    assert "no complete zip archive" in msg and "afresh" in msg


def test_foreign_pickled_object(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")  # a whole pickled module: not plain values
    msg = _error(tmp_path / "model.pt")
    assert "did not write it" in msg


def test_foreign_state_dict(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / LAST)  # loads with weights_only, but has no kind
    msg = _error(tmp_path / LAST)
    assert "not a luna-train checkpoint" in msg and "afresh" in msg


def test_other_kind(tmp_path):
    torch.save(to_plain({"kind": "lightning", "version": 1, **_payload()}), tmp_path / "x.pt")
    assert "kind 'lightning'" in _error(tmp_path / "x.pt")


def test_newer_version(tmp_path):
    torch.save(to_plain({"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION + 1, **_payload()}), tmp_path / LAST)
    msg = _error(tmp_path / LAST)
    assert f"schema version {CHECKPOINT_VERSION + 1}" in msg and "newer luna-train" in msg and BEST in msg


def test_missing_keys(tmp_path):
    payload = _payload()
    del payload["config"]
    torch.save(to_plain({"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, **payload}), tmp_path / LAST)
    assert "lacks ['config']" in _error(tmp_path / LAST)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / LAST)


def test_trained_model_loader_reports_the_file(tmp_path):
    from luna_train.inference.trained_model import load_trained_model

    (tmp_path / BEST).write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match=str(tmp_path / BEST)):
        load_trained_model(tmp_path)
