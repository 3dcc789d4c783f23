"""The gan-style command line: train (demo default, recipes, overrides, resume), bench, download, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gan_style.cli import main as cli_main
from gan_style.config import ConfigError, apply_overrides, parse_set_arguments
from gan_style.engine.checkpoint import load_checkpoint
from gan_style.engine.contract import config_from_overrides
from gan_style.methods.cyclegan import CycleGAN

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "ngf=4", "--set", "ndf=4", "--set", "data.max_dataset_size=3", "--set", "pool_size=2"]


def test_paper_recipe_has_the_papers_defaults():
    recipe = yaml.safe_load((REPO / "train" / "cyclegan_vangogh2photo.yaml").read_text())
    overrides = {k: v for k, v in recipe.items() if k not in ("method", "preset")}
    config = config_from_overrides(CycleGAN, recipe.get("preset"), overrides)
    assert (config.netG, config.netD, config.norm, config.init_type, config.init_gain) == ("resnet_9blocks", "basic", "instance", "normal", 0.02)
    assert (config.gan_mode, config.pool_size, config.lambda_A, config.lambda_B, config.lambda_identity) == ("lsgan", 50, 10.0, 10.0, 0.5)
    assert (config.lr, config.beta1) == (2e-4, 0.5)
    assert (config.train.n_epochs, config.train.n_epochs_decay, config.train.lr_policy, config.train.batch_size) == (100, 100, "linear", 1)
    assert (config.data.preprocess, config.data.load_size, config.data.crop_size, config.data.no_flip) == ("resize_and_crop", 286, 256, False)


def test_set_overrides_are_typed_and_validated():
    config = apply_overrides(CycleGAN.Config(), parse_set_arguments(["lambda_A=5", "data.crop_size=128", "train.max_steps=10", "data.max_dataset_size=none"]))
    assert config.lambda_A == 5.0 and config.data.crop_size == 128 and config.train.max_steps == 10 and config.data.max_dataset_size is None
    with pytest.raises(ConfigError, match="unknown option 'lambda_cycel'.*lambda_A"):
        apply_overrides(CycleGAN.Config(), {"lambda_cycel": 1})
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        apply_overrides(CycleGAN.Config(), {"train.batch_size": "two"})
    with pytest.raises(ValueError, match="crop_size \\(300\\) is larger than load_size \\(286\\)"):
        apply_overrides(CycleGAN.Config(), {"data.crop_size": 300})
    with pytest.raises(ValueError, match="gan_mode must be one of"):
        apply_overrides(CycleGAN.Config(), {"gan_mode": "lsgn"})


@pytest.mark.parametrize("option", [
    "netG=resnet_6blocks", "netG=unet_128", "netD=n_layers", "netD=pixel", "norm=batch", "norm=none",
    "init_type=xavier", "init_type=kaiming", "init_type=orthogonal", "gan_mode=vanilla", "gan_mode=wgangp",
    "train.lr_policy=step", "train.lr_policy=plateau", "train.lr_policy=cosine", "data.preprocess=crop",
    "data.preprocess=scale_width", "data.preprocess=scale_width_and_crop", "data.preprocess=none",
    "data.serial_batches=true", "data.direction=BtoA", "dropout=true", "lambda_identity=0",
    "train.mixed_precision=bf16", "train.precision_fallback=false", "train.channels_last=false",
])
def test_every_reference_option_trains(option, tmp_path, demo_cache):
    settings = ["--set", option, "--set", "data.load_size=32", "--set", "data.crop_size=32"]
    if option.startswith("netG=unet"):
        settings += ["--set", "data.load_size=128", "--set", "data.crop_size=128"]
    if option.startswith("data.preprocess=crop"):
        settings += ["--set", "data.crop_size=32"]
    status = cli_main(["train", "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=2", *TINY, *settings])
    assert status == 0
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    key, _, value = option.partition("=")
    section = state["config"]
    for part in key.split(".")[:-1]:
        section = section[part]
    assert section[key.split(".")[-1]] == yaml.safe_load(value)
    assert all(torch.isfinite(v).all() for v in state["networks"]["G_A"].values())


def test_default_train_is_the_demo_and_resume_continues(tmp_path, demo_cache, capsys):
    run = tmp_path / "demo"
    assert cli_main(["train", "--run-dir", str(run), "--set", "train.max_steps=2", "--set", "ngf=4", "--set", "ndf=4"]) == 0
    out = capsys.readouterr().out
    assert "checkpoints" in out and "tensorboard --logdir" in out and "samples" in out
    saved = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert saved["config"]["data"]["root"] == "demo" and saved["config"]["data"]["crop_size"] == 64
    # Starting again in the same folder refuses to overwrite; --resume continues.
    assert cli_main(["train", "--run-dir", str(run)]) == 2
    assert cli_main(["train", "--resume", str(run), "--set", "train.max_steps=4"]) == 0
    assert load_checkpoint(run / "checkpoints" / "latest.pt")["progress"]["step"] == 4


def test_train_with_a_recipe_and_data_folder(tmp_path, demo_cache):
    from gan_style.data.demo import ensure_demo_dataset

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"method": "cyclegan", "preset": "paper", "netG": "resnet_6blocks",
                                      "data": {"load_size": 40, "crop_size": 32}, "train": {"max_steps": 2}}))
    run = tmp_path / "run"
    assert cli_main(["train", str(recipe), "--data", str(ensure_demo_dataset()), "--run-dir", str(run), *TINY]) == 0
    saved = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert saved["config"]["netG"] == "resnet_6blocks" and saved["config"]["data"]["crop_size"] == 32


def test_train_errors_name_the_problem(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli_main(["train", "--data", str(missing), "--run-dir", str(tmp_path / "r"), "--set", "train.max_steps=1"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli_main(["train", "--set", "lambda_cycel=3", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "unknown option 'lambda_cycel'" in capsys.readouterr().err


def test_bench_prints_one_json_line(capsys):
    assert cli_main(["bench", "cyclegan", "--size", "32", "--steps", "1", "--warmup", "0", "--json", "--set", "ngf=4", "--set", "ndf=4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == "cyclegan" and result["size"] == 32
    assert result["sec_per_iter"] > 0 and result["peak_rss_mb"] > 100


def test_download_subcommand_lists_datasets(capsys):
    assert cli_main(["download", "--list"]) == 0
    assert "vangogh2photo" in capsys.readouterr().out


def test_top_level_help_lists_every_command_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom gan_style.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch not imported" in result.stdout
    for command in ("train", "translate", "swap", "bench", "download", "eval", "compare", "export", "serve", "stylize"):
        assert f"    {command} " in result.stdout or f"    {command}\n" in result.stdout, command


def test_a_commands_own_help_has_its_arguments(capsys):
    for command, option in (("eval", "--metrics"), ("stylize", "--content"), ("train", "--resume")):
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        assert option in capsys.readouterr().out
