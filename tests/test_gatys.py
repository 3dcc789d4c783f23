"""Gatys et al. (CVPR 2016) on the shared NST images, with seeded random VGG-19 weights.

The weight file is written in torchvision's layout and loaded through ``load_vgg19`` with
``preprocessing="caffe"`` (neural-style's Caffe VGG-19 convention). neural-style's loss weights
(content 5, style 100, TV 1e-3) were tuned for the activations of that network, which are in the
hundreds at relu4_x; Kaiming-initialised random weights give activations below one. The file
therefore scales the first convolution by ``CAFFE_SCALE`` (all later activations scale with it,
the network being piecewise linear), so that the three loss terms have the orders of magnitude
the defaults expect. Every test passes through the same code as ``gan-style stylize``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from conftest import DATA, require_shared
from gan_style.methods.nst import gatys
from gan_style.methods.nst.gatys import GatysConfig, GatysObjective, rgb_to_yiq, stylize_gatys
from gan_style.methods.nst.stylize import load_image
from gan_style.methods.nst.stylize import main as stylize_main
from gan_style.nn.vgg import TORCHVISION_VGG19_FILE, load_vgg19

NST = DATA / "nst"
CAFFE_SCALE = 30.0


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    with torch.no_grad():
        features[0].weight.mul_(CAFFE_SCALE)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}.items():
        state[f"{name}.weight"] = torch.zeros(1).expand(*shape)  # torchvision's keys, no storage
        state[f"{name}.bias"] = torch.zeros(1).expand(shape[0])
    path = tmp_path_factory.mktemp("weights") / TORCHVISION_VGG19_FILE
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def vgg(vgg_file):
    return load_vgg19(vgg_file, preprocessing="caffe")


@pytest.fixture(scope="module")
def images():
    content = load_image(require_shared(NST / "content" / "tubingen.jpg"))
    starry = load_image(require_shared(NST / "style" / "starry_night.jpg"))
    scream = load_image(require_shared(NST / "style" / "the_scream.jpg"))
    return content, starry, scream


def test_total_loss_falls_tenfold_at_128px(vgg, images, capsys):
    content, starry, _ = images
    config = GatysConfig(size=128, iterations=16)  # neural-style's defaults otherwise
    assert (config.content_weight, config.style_weight, config.tv_weight) == (5.0, 100.0, 1e-3)
    assert (config.optimizer, config.init, config.content_layers) == ("lbfgs", "noise", ("relu4_2",))
    result = stylize_gatys(vgg, content, [starry], config, progress=True)
    first, last = result.history[0]["total"], result.history[-1]["total"]
    assert last * 10 <= first, f"loss fell only from {first:.4g} to {last:.4g}"
    assert result.image.shape == (1, 3, 96, 128)
    assert 0 <= result.image.min() and result.image.max() <= 1
    assert result.history[-1]["iteration"] == 16
    bar = capsys.readouterr().err
    assert "gatys" in bar and "loss" in bar and "16/16" in bar


def test_adam_and_content_initialisation(vgg, images):
    content, starry, _ = images
    result = stylize_gatys(vgg, content, [starry], GatysConfig(size=48, iterations=8, optimizer="adam", init="content"), progress=False)
    assert len(result.history) == 9  # before each of the 8 updates, and the result
    assert result.history[0]["content"] == 0  # the first image is the content itself
    assert result.history[-1]["total"] < result.history[0]["total"]


def test_blended_styles_target_the_weighted_mean_of_grams(vgg, images):
    content, starry, scream = images
    c, s1, s2 = (gatys.resize_longest_side(x, 48) for x in images)
    config = GatysConfig(size=48)
    blended = GatysObjective(vgg, c, [s1, s2], gatys.normalised_blend((1.0, 3.0), 2), config)
    one = GatysObjective(vgg, c, [s1], [1.0], config)
    two = GatysObjective(vgg, c, [s2], [1.0], config)
    for layer in config.style_layers:
        expected = 0.25 * one.style_targets[layer] + 0.75 * two.style_targets[layer]
        torch.testing.assert_close(blended.style_targets[layer], expected)
    with pytest.raises(ValueError, match="blend weights"):
        stylize_gatys(vgg, content, [starry, scream], GatysConfig(size=32, iterations=1, style_blend_weights=(1.0,)), progress=False)


def test_style_scale_resizes_the_style_images(vgg, images, monkeypatch):
    content, starry, _ = images
    seen: list[tuple[int, ...]] = []

    class Spy(GatysObjective):
        def __init__(self, vgg, content, styles, blend, config):
            seen.extend(tuple(s.shape[-2:]) for s in styles)
            super().__init__(vgg, content, styles, blend, config)

    monkeypatch.setattr(gatys, "GatysObjective", Spy)
    stylize_gatys(vgg, content, [starry], GatysConfig(size=40, iterations=1, style_scale=1.5), progress=False)
    assert max(seen[0]) == math.ceil(40 * 1.5)  # starry night is landscape: its width


def test_original_colors_keep_the_content_chrominance(vgg, images):
    content, starry, _ = images
    result = stylize_gatys(vgg, content, [starry], GatysConfig(size=48, iterations=4, original_colors=True), progress=False)
    out_iq = rgb_to_yiq(result.image)[:, 1:]
    content_iq = rgb_to_yiq(gatys.resize_longest_side(content, 48))[:, 1:]
    # Equal up to the clamping of the output to [0, 1].
    assert (out_iq - content_iq).abs().mean() < 0.01
    # The style's luminance is matched to the content's before the optimisation.
    y_content, (y_style,) = gatys.luminance_transfer_inputs(content, [starry])
    torch.testing.assert_close(y_style.mean(), y_content.mean(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y_style.std(), y_content.std(), rtol=1e-4, atol=1e-4)


def test_coarse_to_fine(vgg, images):
    content, starry, _ = images
    seen_at_start: list[torch.Tensor] = []
    config = GatysConfig(size=64, iterations=3, num_scales=2)
    assert config.scale_sizes == [32, 64]

    def on_iteration(record, image):
        if record["size"] == 64 and not seen_at_start:
            seen_at_start.append(image.clone())

    result = stylize_gatys(vgg, content, [starry], config, progress=False, on_iteration=on_iteration)
    assert sorted({int(r["size"]) for r in result.history}) == [32, 64]
    assert result.image.shape[-2:] == (48, 64)
    # The fine level starts from the upsampled coarse result, not from flat noise.
    assert seen_at_start[0].std() > 0.01


def test_layers_pooling_and_plain_lbfgs(vgg_file, images):
    content, starry, _ = images
    avg = load_vgg19(vgg_file, preprocessing="caffe", pooling="avg")
    config = GatysConfig(
        size=32, iterations=3, content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1"), tv_weight=0.0, lbfgs_line_search="none", init="content"
    )
    result = stylize_gatys(avg, content, [starry], config, progress=False)
    assert len(result.history) == 4  # no line search: one evaluation per iteration, and the result
    assert all(r["tv"] == 0 for r in result.history)
    with pytest.raises(ValueError):
        GatysConfig(optimizer="sgd")
    with pytest.raises(KeyError, match="relu6_1"):
        stylize_gatys(avg, content, [starry], GatysConfig(size=32, iterations=1, style_layers=("relu6_1",)), progress=False)


def test_cli_every_option(vgg_file, tmp_path, capsys):
    require_shared(NST)
    output = tmp_path / "out" / "gatys.png"
    status = stylize_main(
        [
            "--method", "gatys",
            "--content", str(NST / "content" / "tubingen.jpg"),
            "--style", str(NST / "style" / "starry_night.jpg"), str(NST / "style" / "the_scream.jpg"),
            "--style-weights", "1", "3",
            "--output", str(output),
            "--size", "40", "--iterations", "2", "--num-scales", "2", "--style-scale", "0.8",
            "--original-colors", "--init", "content", "--optimizer", "lbfgs", "--learning-rate", "1",
            "--content-weight", "5", "--style-weight", "100", "--tv-weight", "1e-3",
            "--content-layers", "relu4_2", "--style-layers", "relu1_1,relu2_1,relu3_1",
            "--pooling", "avg", "--vgg-weights", str(vgg_file), "--vgg-preprocess", "caffe",
            "--seed", "3", "--device", "cpu", "--quiet",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    from PIL import Image

    with Image.open(output) as image:
        assert image.size == (40, 30)
    assert "wrote" in capsys.readouterr().out


def test_cli_missing_weights(tmp_path, monkeypatch, capsys):
    require_shared(NST)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from gan_style.cli import main as cli_main

    status = cli_main(
        ["stylize", "--content", str(NST / "content" / "tubingen.jpg"), "--style", str(NST / "style" / "starry_night.jpg"), "--output", str(tmp_path / "o.png"), "--size", "32"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert TORCHVISION_VGG19_FILE in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "download.pytorch.org" in err
    assert not (tmp_path / "o.png").exists()


def test_benchmark_entry_point():
    from gan_style.methods.nst.stylize import benchmark

    result = benchmark(gatys_sizes=(32,), gatys_iterations=3, adain_size=32, adain_seconds=0.0)
    assert result["gatys"]["32"]["sec_per_iteration"] > 0 and result["gatys"]["32"]["iterations"] == 3
    assert result["adain"]["images_per_sec"] > 0 and result["adain"]["images"] >= 3
