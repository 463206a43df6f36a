"""Model and loss factories."""

from __future__ import annotations

import pytest
import torch

from luna_train.config import LossConfig, ModelConfig
from luna_train.nets.losses import DeepSupervisionLoss, build_base_loss, build_loss, signed_distance_map
from luna_train.nets.models import build_model, main_output, split_outputs

X = torch.rand(2, 1, 16, 16, 16)


@pytest.mark.parametrize("name", ["unet", "attention_unet", "dynunet"])
def test_model_output_shapes(name):
    model = build_model(ModelConfig(name=name, channels=(4, 8, 16), strides=(2, 2), num_res_units=1,
                                    deep_supr_num=1))
    model.train()
    out = model(X)
    model.eval()
    with torch.no_grad():
        out_eval = model(X)
    assert out_eval.shape == (2, 1, 16, 16, 16)
    if name == "dynunet":
        assert out.shape == (2, 2, 1, 16, 16, 16)  # main output + one deep-supervision level
        assert len(split_outputs(out)) == 2 and main_output(out).shape == (2, 1, 16, 16, 16)
    else:
        assert out.shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize("name, res_units", [("unet", 0), ("unet", 1), ("unet", 2), ("attention_unet", 0),
                                             ("dynunet", 0)])
def test_init_fg_probability_sets_the_initial_foreground_probability(name, res_units):
    """The output bias starts at logit(p): the median initial probability is near p (about 0.5 without it)."""
    def median_prob(prior):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name, channels=(8, 16, 32), strides=(2, 2), num_res_units=res_units,
                                        deep_supr_num=1, init_fg_probability=prior)).train()
        with torch.no_grad():
            return [float(torch.sigmoid(o).median()) for o in split_outputs(model(X))]

    assert all(0.3 < p < 0.7 for p in median_prob(None))
    probs = median_prob(0.01)
    assert len(probs) == (2 if name == "dynunet" else 1)  # every deep-supervision head too
    assert all(0.003 < p < 0.03 for p in probs), probs
    if name == "attention_unet":  # its one-channel attention gates keep their default bias
        model = build_model(ModelConfig(name=name, channels=(8, 16, 32), strides=(2, 2), init_fg_probability=0.01))
        gates = [m for n, m in model.named_modules() if "psi" in n and isinstance(m, torch.nn.Conv3d)]
        assert gates and all(abs(float(g.bias)) < 1.0 for g in gates)


def test_model_rejects_bad_strides():
    with pytest.raises(ValueError, match="strides"):
        build_model(ModelConfig(channels=(4, 8, 16), strides=(2,)))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(name="vnet", channels=(4, 8), strides=(2,)))


def _ball():
    t = torch.zeros(2, 1, 16, 16, 16)
    t[:, :, 5:11, 5:11, 5:11] = 1
    return t


@pytest.mark.parametrize("name", ["dicefocal", "dicece", "dice", "tversky", "combo"])
def test_perfect_prediction_has_near_zero_loss(name):
    target = _ball()
    loss = build_loss(LossConfig(name=name))
    perfect = loss(target * 40 - 20, target)
    wrong = loss(torch.zeros_like(target), target)
    assert float(perfect) < 1e-3
    assert float(wrong) > 0.3


def test_combo_loss_finite_and_decreases_along_gradient():
    target = _ball()
    loss_fn = build_base_loss(LossConfig(name="combo", combo_dice=1, combo_focal=1, combo_tversky=0.5,
                                         combo_boundary=1.0))
    logits = torch.randn_like(target, requires_grad=True)
    before = loss_fn(logits, target)
    assert torch.isfinite(before)
    before.backward()
    with torch.no_grad():
        after = loss_fn(logits - 5.0 * logits.grad / logits.grad.norm() * 10, target)
    assert float(after) < before.item()


def test_signed_distance_map_signs():
    target = _ball()
    phi = signed_distance_map(target)
    assert float(phi[0, 0, 8, 8, 8]) < 0 < float(phi[0, 0, 0, 0, 0])
    assert float(phi[0, 0, 5, 8, 8]) == 0.0  # boundary voxel inside
    assert torch.equal(signed_distance_map(torch.zeros_like(target)), torch.zeros_like(target))


def test_deep_supervision_weights_and_resized_targets():
    target = _ball()
    base = build_base_loss(LossConfig(name="dice"))
    wrapper = DeepSupervisionLoss(base, decay=0.5)
    good, bad = target * 40 - 20, torch.zeros_like(target)
    stacked = torch.stack([good, bad], dim=1)  # level 0 perfect, level 1 wrong
    expected = (1.0 * base(good, target) + 0.5 * base(bad, target)) / 1.5
    assert float(wrapper(stacked, target)) == pytest.approx(float(expected), rel=1e-5)
    small = torch.nn.functional.interpolate(good, size=(8, 8, 8), mode="nearest")
    assert float(wrapper([good, small], target)) < 1e-3  # target resized to the coarse output


def test_dicece_positive_weight_scales_the_cross_entropy_of_nodule_voxels():
    target = torch.zeros(2, 1, 8, 8, 8)
    target[:, :, 3:5, 3:5, 3:5] = 1
    missed = torch.full_like(target, -4.0)  # predicts background everywhere
    plain = build_base_loss(LossConfig(name="dicece", lambda_dice=0.0))
    weighted = build_base_loss(LossConfig(name="dicece", lambda_dice=0.0, ce_pos_weight=50.0))
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(plain(missed, target)) == pytest.approx(float(bce(missed, target)), rel=1e-5)
    fg = target.mean()  # share of nodule voxels: their CE term is multiplied by 50
    expected = ((1 - fg) * bce(torch.tensor(-4.0), torch.tensor(0.0))
                + 50 * fg * bce(torch.tensor(-4.0), torch.tensor(1.0)))
    assert float(weighted(missed, target)) == pytest.approx(float(expected), rel=1e-5)
