"""Step-speed options (compile, channels-last, fused AdamW, device-side loss sums): same numbers, clean checkpoints."""

from dataclasses import replace

import pytest
import torch

from luna_train.config import ConfigError, LossConfig, ModelConfig, OptimConfig, TrainLoopConfig, load_config
from luna_train.nets.losses import build_loss
from luna_train.nets.models import build_model
from luna_train.training.loop import LoopState, TrainParts, train_epoch, train_step
from luna_train.training.speed import (
    StepOptions,
    build_optimizer,
    compile_module,
    format_batch,
    format_model,
    plain_state_dict,
)

CPU = torch.device("cpu")
TINY = ModelConfig(channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def _batches(n: int, size: int = 12, batch: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        image = torch.rand((batch, 1, size, size, size), generator=g)
        out.append((image, (image > 0.7).float()))
    return out


def _parts(opts: StepOptions, backend: str = "aot_eager") -> TrainParts:
    torch.manual_seed(0)
    model = format_model(build_model(TINY), opts)
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=1e-2), opts)
    return TrainParts(model=compile_module(model, opts, backend=backend), loss_fn=build_loss(LossConfig()),
                      optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                      scaler=torch.amp.GradScaler("cpu", enabled=False), sampler=None, loader=None, device=CPU,
                      grad_clip=1.0, options=opts)


def _train(opts: StepOptions) -> tuple[list[float], dict[str, torch.Tensor], torch.Tensor]:
    """Losses of 3 steps, the parameters after them, and the trained model's logits on a new batch."""
    parts = _parts(opts)
    losses = [float(train_step(parts, image, label)[0].detach()) for image, label in _batches(3)]
    parts.model.eval()
    with torch.no_grad():
        logits = parts.model(format_batch(_batches(4)[3][0], opts)).float()
    return losses, {k: v.detach().clone() for k, v in plain_state_dict(parts.model.state_dict()).items()}, logits


@pytest.fixture(scope="module")
def baseline():
    return _train(StepOptions())


@pytest.mark.parametrize("opts", [StepOptions(channels_last=True), StepOptions(fused_optimizer=True),
                                  StepOptions(compile=True, channels_last=True, fused_optimizer=True)],
                         ids=["channels_last", "fused", "compile+all"])
def test_each_option_trains_to_the_same_loss_and_parameters(opts, baseline):
    base_losses, base_params, base_logits = baseline
    losses, params, logits = _train(opts)
    assert losses == pytest.approx(base_losses, rel=1e-4, abs=1e-5)
    assert base_losses[2] != pytest.approx(base_losses[0], rel=1e-3)  # the steps did train
    assert params.keys() == base_params.keys()
    # the trained models compute the same function (biases ahead of a normalization have zero gradient up
    # to rounding, which Adam scales to full-size steps, so single parameters are compared loosely)
    assert torch.allclose(logits, base_logits, rtol=1e-3, atol=1e-3)
    for k in params:
        assert torch.allclose(params[k], base_params[k], atol=3 * 1e-2 * 1.01), k


def test_compiled_model_checkpoint_loads_into_a_plain_model():
    parts = _parts(StepOptions(compile=True))
    image, label = _batches(1)[0]
    train_step(parts, image, label)
    compiled_state = parts.model.state_dict()
    assert all(k.startswith("_orig_mod.") for k in compiled_state)
    plain = build_model(TINY)
    plain.load_state_dict(plain_state_dict(compiled_state))  # strict: every key matches
    parts.model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(plain(image), parts.model(image), atol=1e-5)
    ddp_like = {f"module.{k}": v for k, v in plain.state_dict().items()}
    assert plain_state_dict(ddp_like).keys() == plain.state_dict().keys()


def test_channels_last_formats_model_and_batch():
    opts = StepOptions(channels_last=True)
    model = format_model(build_model(TINY), opts)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = format_batch(torch.rand(2, 3, 4, 4, 4), opts)
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    assert format_batch(x, StepOptions()) is x


def test_options_resolve_per_device_and_are_checked():
    tc = TrainLoopConfig()
    assert StepOptions.of(tc, torch.device("cuda")) == StepOptions(compile=True, channels_last=True,
                                                                  fused_optimizer=True)
    assert StepOptions.of(tc, CPU) == StepOptions()
    forced = StepOptions.of(replace(tc, compile=False, channels_last=True, compile_mode="reduce-overhead"),
                            torch.device("cuda"))
    assert (forced.compile, forced.channels_last, forced.compile_mode) == (False, True, "reduce-overhead")
    cfg = load_config(None, ["train.compile=true", "train.channels_last=false", "train.fused_optimizer=null",
                             "train.compile_mode=max-autotune"])
    assert (cfg.train.compile, cfg.train.channels_last, cfg.train.fused_optimizer) == (True, False, None)
    for bad, key in (("train.compile_mode=fast", "train.compile_mode"),
                     ("train.channels_last=1", "train.channels_last"),
                     ("train.fused_optimizer=maybe", "train.fused_optimizer")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


class _Sampler:
    def __init__(self, n):
        self.n = n

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.n


def test_loss_sums_stay_on_the_device_between_sync_points():
    """Syncing every third step gives the epoch's exact loss sum; between syncs the host value waits."""
    data = [{"image": x, "label": y, "position": torch.arange(2) + 2 * i} for i, (x, y) in enumerate(_batches(5))]
    results = {}
    for name, sync_at in (("every", None), ("third", lambda step: step % 3 == 0)):
        parts = replace(_parts(StepOptions()), sampler=_Sampler(10), loader=data, batch_size=2, sync_at=sync_at,
                        hard_mining=True)
        state, hard, seen_sums = LoopState(), {"positions": [], "scores": []}, []
        mean = train_epoch(parts, state, hard=hard, on_step=lambda st, sums=seen_sums: sums.append(st.loss_sum))
        results[name] = (mean, state.loss_sum, seen_sums, hard)
    every, third = results["every"], results["third"]
    assert third[0] == pytest.approx(every[0], rel=1e-12) and third[1] == pytest.approx(every[1], rel=1e-12)
    assert third[2][2] == pytest.approx(every[2][2]) and third[2][4] == pytest.approx(every[2][4])
    assert third[2][0] == third[2][1] == 0.0 and third[2][3] == third[2][2]  # not synced after steps 1, 2, 4
    assert third[3]["positions"] == every[3]["positions"] == list(range(10))
    assert third[3]["scores"] == pytest.approx(every[3]["scores"])
