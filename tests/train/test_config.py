"""Config: YAML/TOML loading, --set overrides, unknown-key errors, round trip."""

from __future__ import annotations

import pytest

from luna_train.config import ConfigError, TrainConfig, load_config, read_config_file, save_config

from paths import REPO


def test_yaml_and_toml_load_the_same(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "model:\n  name: dynunet\n  channels: [8, 16, 32]\n  strides: [2, 2]\n  deep_supr_num: 1\n"
        "optim:\n  lr: 3e-4\nsampler:\n  scale_weights: {48: 1, 64: 2}\nsplit:\n  val_subsets: [7]\n")
    (tmp_path / "a.toml").write_text(
        '[model]\nname = "dynunet"\nchannels = [8, 16, 32]\nstrides = [2, 2]\ndeep_supr_num = 1\n'
        '[optim]\nlr = 3e-4\n[sampler.scale_weights]\n48 = 1\n64 = 2\n[split]\nval_subsets = [7]\n')
    a, b = load_config(tmp_path / "a.yaml"), load_config(tmp_path / "a.toml")
    assert a == b
    assert a.model.channels == (8, 16, 32) and a.model.strides == (2, 2)
    assert a.optim.lr == pytest.approx(3e-4) and isinstance(a.optim.lr, float)
    assert a.sampler.scale_weights == {48: 1.0, 64: 2.0}
    assert a.split.val_subsets == (7,)
    assert a.train == TrainConfig().train  # untouched sections keep defaults


def test_set_overrides_nested_and_lists():
    cfg = load_config(None, ["model.channels=[4, 8]", "model.strides=[2]", "optim.betas=[0.8, 0.9]",
                             "data.train_size=null", "train.epochs=3", "sampler.kind_weights={nodule: 2}",
                             "loss.name=combo", "split.fold=2"])
    assert cfg.model.channels == (4, 8) and cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.train_size is None and cfg.train.epochs == 3
    assert cfg.sampler.kind_weights == {"nodule": 2.0}
    assert cfg.loss.name == "combo" and cfg.split.fold == 2


def test_set_applies_on_top_of_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 7\n  patience: 3\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.epochs=9"])
    assert cfg.train.epochs == 9 and cfg.train.patience == 3


@pytest.mark.parametrize("override,needle", [
    ("model.chanels=[4]", "model.chanels"), ("modle.name=unet", "modle"), ("optim.lr.x=1", "optim.lr"),
])
def test_unknown_keys_are_named(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_unknown_key_in_file_lists_valid_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "bad.yaml")
    msg = str(err.value)
    assert "learning_rate" in msg and "lr" in msg and "weight_decay" in msg


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.channels=[4, 8]", "model.strides=[2]", "sampler.scale_weights={16: 1}"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert read_config_file(tmp_path / "config.yaml")["model"]["channels"] == [4, 8]


@pytest.mark.parametrize("name", ["demo.yaml", "luna16.yaml"])
def test_shipped_configs_load(name):

    cfg = load_config(REPO / "configs" / name)
    assert cfg.train.epochs > 0


@pytest.mark.parametrize("override, key, allowed", [
    ("loss.name=dicefocall", "loss.name", "one of dicefocal, dicece, dice, tversky, combo"),
    ("optim.lr=abc", "optim.lr", "expected a finite number"),
    ("train.epochs=1.5", "train.epochs", "expected an integer >= 1"),
    ("model.name=foo", "model.name", "one of unet, attention_unet, dynunet"),
    ("train.amp=fp8", "train.amp", "one of bf16, fp16, none"),
    ("data.batch_size=-3", "data.batch_size", "an integer >= 1"),
    ("train.threshold=1.5", "train.threshold", "a finite number >= 0 and <= 1"),
    ("optim.betas=[0.9]", "optim.betas", "a list of 2 values"),
    ("model.channels=[8, x]", "model.channels[1]", "an integer >= 1"),
    ("logging.tensorboard=maybe", "logging.tensorboard", "true or false"),
    ("data.eval_scale=null", "data.eval_scale", "null is not allowed"),
    ("sampler.scale_weights={48: heavy}", "sampler.scale_weights.48", "a finite number"),
    ("split.test_subsets=[9, 11]", "split.test_subsets", "LUNA16 has subsets 0-9, not 11"),
    ("split.fold=9", "split", "fold 9 is a test subset"),
    ("model.strides=[2, 2]", "model.strides", "4 model.channels need 3 strides"),
    ("optim.restart_mult=0.5", "optim.restart_mult", ">= 1"),  # shrinking periods end: the LR would be undefined
    ("optim.lr=inf", "optim.lr", "a finite number > 0"),
    ("loss.gamma=.inf", "loss.gamma", "a finite number >= 0"),
    # the data-side sections are checked like the others (they were taken as given: a probability of 2, a
    # negative crop, a misspelt kind whose weight was silently ignored)
    ("augment.flip_prob=2", "augment.flip_prob", "a finite number >= 0 and <= 1"),
    ("augment.crop_size=-8", "augment.crop_size", "an integer >= 1"),
    ("augment.crop_size=80", "augment.crop_size", "larger than the 64^3 training patches"),
    ("sampler.fg_fraction=1.5", "sampler.fg_fraction", ">= 0 and <= 1"),
    ("sampler.kind_weights={nodules: 0}", "sampler.kind_weights key 'nodules'", "one of nodule, random, candidate"),
    ("sampler.kind_weights={nodule: -1}", "sampler.kind_weights.nodule", ">= 0"),
    ("sampler.samples_per_epoch=-3", "sampler.samples_per_epoch", "an integer >= 1"),
    ("sampler.hard_mining_top=5", "sampler.hard_mining_top", "> 0 and <= 1"),
    ("model.kernel_size=2", "model.kernel_size", "an odd integer"),
    ("loss.ce_pos_weight=3", "loss.ce_pos_weight", "only the dicece loss"),  # the default loss is dicefocal
    ("logging.wandb_project=[a]", "logging.wandb_project", "a string"),
    ("optim.restart_epochs=1", "optim.restart_epochs", "warm restarts restart a cosine"),  # with schedule constant
])
def test_bad_values_fail_at_load_naming_key_and_allowed_values(override, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.schedule=constant", override] if "restart" in override else [override])
    assert str(err.value).startswith(f"{key}:") and allowed in str(err.value), str(err.value)


def test_bad_value_in_a_file_is_named_by_file_and_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\namp = "fp8"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: train.amp: 'fp8' is not valid; expected one of bf16, fp16, none"
    # an override's mistake is the override's, not the file's
    with pytest.raises(ConfigError, match=r"^train\.epochs: 0 is not valid"):
        load_config(path, ["train.amp=bf16", "train.epochs=0"])
    with pytest.raises(ConfigError, match=r"c\.toml: unknown config key model\.chanels"):
        path.write_text('[model]\nchanels = [4]\n')
        load_config(path)


@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", b"model:\n  channels: [16, 32\n", "not a valid YAML file: while parsing a flow sequence"),
    ("bad.toml", b"[model]\nchannels = [1,\n", "not a valid TOML file"),
    ("bin.yaml", b"\xff\xfe", "not a valid YAML file: 'utf-8' codec can't decode"),
    ("dup.yaml", b"model:\n  name: unet\nmodel:\n  name: dynunet\n", "key 'model' is given twice"),
    ("dupkey.yaml", b"optim:\n  lr: 1e-3\n  lr: 1e-2\n", "key 'lr' is given twice"),
])
def test_unreadable_config_files_are_usage_errors_naming_the_file(tmp_path, name, text, needle):
    (tmp_path / name).write_bytes(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / name)
    assert str(err.value).startswith(f"{tmp_path / name}: ") and needle in str(err.value), str(err.value)


def test_string_fields_keep_what_was_typed(tmp_path):
    cfg = load_config(None, ["logging.wandb_project=1.10", "logging.mlflow_experiment=0755"])
    assert cfg.logging.wandb_project == "1.10" and cfg.logging.mlflow_experiment == "0755"
    (tmp_path / "c.yaml").write_text("logging:\n  wandb_project: 1.10\n")  # YAML reads a float: refused, not 1.1
    with pytest.raises(ConfigError, match=r"logging\.wandb_project: 1\.1 is not valid; expected a string"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("channels, strides, supr, allowed", [
    ("[16, 32, 64]", "[2, 2]", 2, "expected 1..1 or model.deep_supervision=false"),
    ("[16, 32]", "[2]", 1, "expected model.deep_supervision=false"),
])
def test_dynunet_deep_supervision_levels_are_checked_at_load(channels, strides, supr, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name=dynunet", f"model.channels={channels}", f"model.strides={strides}",
                           f"model.deep_supr_num={supr}"])
    assert str(err.value).startswith("model.deep_supr_num:") and allowed in str(err.value)
    load_config(None, ["model.name=dynunet", f"model.channels={channels}", f"model.strides={strides}",
                       "model.deep_supervision=false"])


def test_values_are_converted_losslessly_only():
    cfg = load_config(None, ["optim.lr=3e-4", "train.epochs=3.0", "data.train_size=null", "loss.name=dicece",
                             "loss.ce_pos_weight=5"])
    assert cfg.optim.lr == 3e-4 and cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.train_size is None and cfg.loss.ce_pos_weight == 5.0 and isinstance(cfg.loss.ce_pos_weight, float)
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["train.compile=1"])  # an integer is not a boolean


def test_configs_are_frozen_and_defaults_valid():
    import dataclasses

    from luna_train.config import from_dict, to_dict

    cfg = TrainConfig()
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    for section in (cfg.data, cfg.split, cfg.sampler, cfg.augment, cfg.model, cfg.loss, cfg.optim, cfg.train,
                    cfg.logging):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, dataclasses.fields(section)[0].name, None)


def test_config_errors_are_usage_errors():
    from luna_prep.errors import LunaError, UsageError

    assert issubclass(ConfigError, UsageError) and issubclass(ConfigError, LunaError)
    assert issubclass(ConfigError, ValueError) and ConfigError.exit_code == 2


def test_a_mapping_without_spaces_is_explained():
    """YAML 1.1 reads {48:1} as the base-60 key 2881 without a value: the error named 'scale_weights.2881'."""
    with pytest.raises(ConfigError, match=r"write a mapping with a space after each colon, as \{48: 1, 64: 0\}"):
        load_config(None, ["sampler.scale_weights={48:1,64:0,96:0}"])
    assert load_config(None, ["sampler.scale_weights={48: 1, 64: 0}"]).sampler.scale_weights == {48: 1.0, 64: 0.0}
