"""Test-time augmentation: exact inverses, identity/equivariant models, non-cubic inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from luna_train.inference.tta import tta_predict, tta_transforms


def rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def two_class_maxpool(t: torch.Tensor) -> torch.Tensor:
    """Equivariant to flips and H-W rotations, with exact arithmetic: 3x3x3 max then p, 1 - p."""
    p = F.max_pool3d(t[:, :1], kernel_size=3, stride=1, padding=1)
    return torch.cat([p, 1 - p], dim=1)


@pytest.mark.parametrize("flips,rotations,n", [
    (True, True, 16), (True, False, 8), (False, True, 4), (False, False, 1),
    (True, (2,), 8),  # 180 degrees in H-W is already the flip of H and W
    (True, (1,), 16), (False, (1, 3), 3)])
def test_number_of_distinct_transforms(flips, rotations, n):
    ts = tta_transforms(flips, rotations)
    assert len(ts) == n
    x = rand(1, 1, 2, 3, 3)
    outs = [fwd(x) for fwd, _ in ts]
    assert torch.equal(outs[0], x)  # identity first
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(outs, 2))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 5), (1, 2, 3, 4, 6), (1, 1, 6, 6, 6)])
def test_each_inverse_undoes_its_forward(shape):
    x = rand(*shape)
    ts = tta_transforms(spatial_shape=shape[2:])
    for fwd, inv in ts:
        y = fwd(x)
        assert torch.equal(inv(y), x), fwd.__name__
        if shape[3] != shape[4]:
            assert y.shape == x.shape  # no 90-degree rotation on a non-square H-W plane


def test_non_square_plane_skips_quarter_turns():
    # H != W: flips (8) and 180 degrees (= flip of H and W, already there) -> 8 transforms.
    assert len(tta_transforms(spatial_shape=(4, 5, 6))) == 8
    assert len(tta_transforms(spatial_shape=(4, 6, 6))) == 16  # D may differ from H, W


@pytest.mark.parametrize("shape", [(2, 1, 4, 6, 6), (1, 1, 3, 4, 5), (1, 2, 8, 5, 7)])
def test_identity_model_returns_its_input_exactly(shape):
    x = rand(*shape)
    assert torch.equal(tta_predict(lambda t: t, x), x)


@pytest.mark.parametrize("shape", [(2, 1, 5, 6, 6), (1, 1, 4, 5, 7)])
def test_equivariant_model_equals_plain_prediction(shape):
    x = rand(*shape)
    plain = two_class_maxpool(x)
    out = tta_predict(two_class_maxpool, x)
    assert out.shape == (shape[0], 2, *shape[2:]) and out.dtype == plain.dtype
    assert torch.equal(out, plain)


def test_non_equivariant_model_is_averaged_over_flips():
    # f(t) = t * R for a fixed ramp R: inverse(f(forward(x))) = x * inverse(R), so the flip-TTA
    # mean is x times the mean of R over the 8 flips.
    shape = (1, 1, 3, 4, 5)
    ramp = torch.arange(60, dtype=torch.float32).reshape(shape)
    x = rand(*shape)
    flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
    sym = torch.stack([torch.flip(ramp, d) if d else ramp for d in flips]).double().mean(0)
    out = tta_predict(lambda t: t * ramp, x, flips=True, rotations=False)
    torch.testing.assert_close(out, (x.double() * sym).float())
    assert not torch.allclose(out, x * ramp)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        tta_predict(lambda t: t, rand(1, 4, 4, 4))
    with pytest.raises(ValueError):
        tta_predict(lambda t: t[:, :, :-1], rand(1, 1, 4, 4, 4))
    with pytest.raises(ValueError):
        tta_transforms(rotations=(4,))
