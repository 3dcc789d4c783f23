"""Exact tiled translation (gan_style.tiling): tiles give the whole-image result, whole-image
statistics included, for the ResNet generators (CycleGAN, CUT), U-Nets, MUNIT, AdaIN and the
Swapping Autoencoder (its texture codes and noise maps)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import GOLDEN
from gan_style import tiling
from gan_style.api import _ready_model
from gan_style.api import load as load_model
from gan_style.cli import main as cli_main
from gan_style.data.images import pil_to_tensor, tensor_to_pil
from gan_style.engine.contract import config_from_overrides
from gan_style.errors import UserError
from gan_style.methods import get_method
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.layers import InstanceNorm2d
from gan_style.nn.stylegan2 import NoiseInjection
from gan_style.translate import ImageTranslator, check_options, run_tiled, run_tiled_exact, translate_images

CYCLEGAN_G = GOLDEN / "cyclegan" / "resnet_9blocks_ngf16" / "latest_net_G.pth"
CUT_G = GOLDEN / "cut" / "CUT_ngf16_ndf16" / "latest_net_G.pth"


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with regions of different brightness and some noise: tiles of it have
    different statistics, as tiles of a photo do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + 1) * 0.5 + 0.5, y, (x * y * 4) % 1], axis=-1)
    base[: height // 2, : width // 3] *= 0.3  # a dark block
    noisy = base * 200 + rng.normal(0, 12, base.shape) + 20
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def grey_levels(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))


def smoke_model(name: str, **overrides):
    cls = get_method(name)
    method = cls(config_from_overrides(cls, "smoke", overrides))
    return _ready_model(method, method.build_networks(), torch.device("cpu"), name)


# -- the acceptance cases of issue 13 --------------------------------------------------------------
@pytest.mark.skipif(not CYCLEGAN_G.is_file(), reason="needs shared/golden")
def test_cli_tiles_of_the_golden_cyclegan_generator_equal_the_whole_pass(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    photo_like(512, 384).save(source / "photo.png")
    for name, extra in (("whole", []), ("tiled", ["--tile", "128"]), ("per_tile", ["--tile", "128", "--tile-overlap", "32", "--tile-mode", "per-tile"])):
        assert cli_main(["translate", "--checkpoint", str(CYCLEGAN_G), "--input", str(source), "--output", str(tmp_path / name),
                         "--device", "cpu", "--quiet", *extra]) == 0
    whole = Image.open(tmp_path / "whole" / "photo.png")
    levels = grey_levels(Image.open(tmp_path / "tiled" / "photo.png"), whole)
    assert np.mean(levels <= 1) >= 0.999 and levels.max() <= 2
    # per-tile instance norm is what the exact mode fixes: it is visibly off on this image
    assert grey_levels(Image.open(tmp_path / "per_tile" / "photo.png"), whole).mean() > 2


@pytest.mark.skipif(not CUT_G.is_file(), reason="needs shared/golden")
def test_api_tiles_of_the_golden_cut_generator_equal_the_whole_pass():
    model = load_model(CUT_G, device="cpu")
    image = photo_like(512, 384, seed=1)
    levels = grey_levels(model.translate(image, tile=128), model.translate(image))
    assert np.mean(levels <= 1) >= 0.999 and levels.max() <= 2


def test_full_size_resnet9_generator_tiles_equal_the_whole_pass():
    torch.manual_seed(0)
    net = build_generator(GeneratorSpec("resnet_9blocks", ngf=64)).eval()  # CycleGAN's, random weights
    x = torch.rand(1, 3, 384, 512) * 2 - 1
    with torch.inference_mode():
        whole = net(x)
    tiled = run_tiled_exact(net, x, 4, 128)
    assert (tiled - whole).abs().max().item() * 127.5 < 0.05


@pytest.mark.parametrize("inputs", [{"seed": 3}, {"style": "image"}])
def test_munit_tiles_equal_the_whole_pass(inputs):
    torch.manual_seed(0)
    model = smoke_model("munit")
    if inputs.get("style") == "image":
        inputs = {"style": torch.rand(1, 3, 64, 64) * 2 - 1}
    x = torch.rand(2, 3, 100, 132) * 2 - 1  # two images: each its own statistics
    whole = model.translate(x, **inputs)
    assert (model.translate(x, tile=32, **inputs) - whole).abs().max().item() < 1e-4
    assert (model.translate(x, tile=32, tile_mode="per-tile", tile_overlap=16, **inputs) - whole).abs().mean().item() > 1e-3


def test_adain_tiles_equal_the_whole_pass_with_alpha():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random encoder weights
        model = smoke_model("adain", vgg_weights="random")
    for net in model.networks.values():  # weights that keep the random VGG's features alive
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.uniform_(module.bias, -0.1, 0.1)
    style = torch.rand(1, 3, 64, 64) * 2 - 1
    x = torch.rand(1, 3, 101, 83) * 2 - 1  # not a multiple of 8: ceil-mode pooling at the border
    whole = model.translate(x, style=style, alpha=0.6)
    assert whole.std() > 0.05
    tiled = model.translate(x, tile=24, style=style, alpha=0.6)
    assert (tiled - whole).abs().max().item() < 1e-4
    per_tile = model.translate(x, tile=24, tile_mode="per-tile", tile_overlap=8, style=style, alpha=0.6)
    assert (per_tile - whole).abs().mean().item() > 1e-3


SWAPAE = GOLDEN / "sae" / "latest_checkpoint.pth"


@pytest.mark.skipif(not SWAPAE.is_file(), reason="needs shared/golden")
def test_cli_swap_tiles_of_the_golden_swapping_autoencoder_equal_the_whole_pass(tmp_path):
    photo_like(512, 384).save(tmp_path / "structure.png")
    photo_like(300, 200, seed=5).save(tmp_path / "texture.png")
    common = ["swap", "--checkpoint", str(SWAPAE), "--structure", str(tmp_path / "structure.png"),
              "--texture", str(tmp_path / "texture.png"), "--alpha", "0.5", "1", "--device", "cpu"]
    assert cli_main([*common, "--output", str(tmp_path / "whole.png")]) == 0
    assert cli_main([*common, "--output", str(tmp_path / "tiled.png"), "--tile", "128"]) == 0
    for alpha in ("0.5", "1"):
        whole, tiled = (Image.open(tmp_path / f"{name}_alpha{alpha}.png") for name in ("whole", "tiled"))
        assert whole.size == (512, 384)
        levels = grey_levels(tiled, whole)
        assert np.mean(levels <= 1) >= 0.999 and levels.max() <= 2


def test_swapae_tiles_equal_the_whole_pass_noise_and_texture_interpolation_included():
    torch.manual_seed(0)
    model = smoke_model("swapae")
    for module in model.networks["G"].modules():  # the noise strengths start at 0: make the noise count
        if isinstance(module, NoiseInjection):
            nn.init.uniform_(module.weight, 0.2, 0.5)
    model.networks["G"].ToRGB.conv.weight.data.mul_(0.1)  # outputs inside [-1, 1]: compared, not clamped
    texture = torch.rand(1, 3, 80, 72) * 2 - 1
    x = torch.rand(2, 3, 100, 132) * 2 - 1  # two images (each its own texture code), not multiples of 16
    for alpha in (1.0, 0.3):
        whole = model.swap(x, texture, alpha=alpha, seed=7)
        assert (whole.abs() < 1).float().mean() > 0.95
        assert (model.swap(x, texture, alpha=alpha, seed=7, tile=32) - whole).abs().max().item() < 1e-4
        # alone, an image gets what it gets in the batch (one noise map per layer for all)
        assert (model.swap(x[1:], texture, alpha=alpha, seed=7) - whole[1:]).abs().max().item() < 1e-5
    per_tile = model.translate(x, tile=32, tile_mode="per-tile", tile_overlap=16, texture=texture, alpha=0.3, seed=7)
    assert (per_tile - whole).abs().mean().item() > 1e-3


# -- the executor on its own ---------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [0, tiling.DEFAULT_MEMORY_BUDGET])
@pytest.mark.parametrize("kind,antialias", [("resnet_6blocks", False), ("resnet_4blocks", True), ("unet_128", False)])
def test_generators_with_and_without_buffers(kind, antialias, budget):
    torch.manual_seed(0)
    net = build_generator(GeneratorSpec(kind, ngf=4, antialias=antialias, antialias_up=antialias)).eval()
    size = (256, 128) if kind.startswith("unet") else (76, 108)
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.inference_mode():
        whole = net(x)
    assert (tiling.run_exact(net, x, 24, memory_budget=budget) - whole).abs().max().item() < 1e-5


class Odd(nn.Module):
    """Layers and sizes the generators do not have: dilation, zero padding, odd kernels and
    strides, ceil-mode pooling, bilinear up-sampling, transposed convs with more output padding
    than padding, group norm, layer-norm-like group norm, an in-place activation after a buffer."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.GroupNorm(2, 8), nn.ReLU(True),
            nn.ReplicationPad2d((1, 2, 0, 1)), nn.Conv2d(8, 8, (3, 5), stride=(1, 2)), nn.ReLU(True),
            nn.MaxPool2d(2, 2, ceil_mode=True), InstanceNorm2d(8), nn.LeakyReLU(0.2, True),
            nn.ConvTranspose2d(8, 6, 3, stride=3, padding=0, output_padding=1), nn.GroupNorm(1, 6, affine=True),
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.ReflectionPad2d(2), nn.Conv2d(6, 3, 5), nn.Tanh(),
        )

    def forward(self, x):
        return self.model(x)


@pytest.mark.parametrize("size", [(37, 53), (64, 29)])
def test_unusual_layers_and_odd_sizes(size):
    torch.manual_seed(0)
    net = Odd().eval()
    nn.init.normal_(net.model[9].bias)  # a transposed conv bias that the output padding shows
    with torch.no_grad():
        net.model[10].weight.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, *size) * 2 - 1
    with torch.inference_mode():
        whole = net(x)
    for tile, budget in ((9, 0), (16, tiling.DEFAULT_MEMORY_BUDGET)):
        assert (tiling.run_exact(net.model, x, tile, memory_budget=budget) - whole).abs().max().item() < 1e-5


def test_buffers_stay_within_the_memory_budget(monkeypatch):
    torch.manual_seed(0)
    net = build_generator(GeneratorSpec("resnet_4blocks", ngf=8)).eval()
    x = torch.rand(1, 3, 96, 96) * 2 - 1
    budget = 3 * 96 * 96 * 4 + 32 * 24 * 24 * 4 * 2  # the image and two bottleneck maps
    held: list[int] = []
    hold = tiling.Executor._hold

    def spy(self, buffer):
        out = hold(self, buffer)
        held.append(sum(b.tensor.numel() * 4 for b in self.buffers))
        return out

    monkeypatch.setattr(tiling.Executor, "_hold", spy)
    with torch.inference_mode():
        whole = net(x)
    assert (tiling.run_exact(net, x, 32, memory_budget=budget) - whole).abs().max().item() < 1e-5
    assert len(held) > 2 and max(held) <= budget  # bottleneck maps were kept, within the budget


# -- fallback and options --------------------------------------------------------------------------------
class Unknown(nn.Module):
    def forward(self, x):
        return x.flip(-1)


def test_unknown_layers_fall_back_to_per_tile_with_a_warning(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), Unknown(), InstanceNorm2d(3)).eval()
    with pytest.raises(tiling.Unsupported, match="Unknown"):
        tiling.lower(net)
    photo_like(40, 36).save(tmp_path / "a.png")
    messages: list[str] = []
    translate_images(ImageTranslator(net, 4, "a custom network"), [tmp_path / "a.png"], tmp_path / "out", tile=16, tile_overlap=8,
                     progress=False, report=messages.append)
    assert any("cannot be tiled exactly" in m and "Unknown" in m for m in messages)
    with torch.inference_mode():
        expected = tensor_to_pil(run_tiled(net, pil_to_tensor(Image.open(tmp_path / "a.png"))[None], 4, 16, 8)[0])
    assert grey_levels(Image.open(tmp_path / "out" / "a.png"), expected).max() == 0


def test_cli_path_modes(tmp_path):
    torch.manual_seed(0)
    translator = ImageTranslator(build_generator(GeneratorSpec("resnet_6blocks", ngf=4)).eval(), 4, "resnet")
    photo_like(96, 64).save(tmp_path / "a.png")
    for name, options in (("per_tile", {"tile": 32, "tile_overlap": 16, "tile_mode": "per-tile"}), ("exact", {"tile": 32}), ("whole", {})):
        translate_images(translator, [tmp_path / "a.png"], tmp_path / name, progress=False, **options)
    whole = Image.open(tmp_path / "whole" / "a.png")
    assert grey_levels(Image.open(tmp_path / "exact" / "a.png"), whole).max() <= 1
    assert grey_levels(Image.open(tmp_path / "per_tile" / "a.png"), whole).mean() > 1


def test_tile_mode_is_checked():
    with pytest.raises(UserError, match="--tile-mode"):
        check_options(tile=128, tile_mode="blocks")
    model = smoke_model("cyclegan")
    with pytest.raises(UserError, match="--tile-mode"):
        model.translate(torch.zeros(1, 3, 32, 32), tile=16, tile_mode="blocks")
    with pytest.raises(UserError, match="--tile"):
        model.translate(torch.zeros(1, 3, 32, 32), tile=0)


def test_tiny_images_and_tiles_smaller_than_the_network_minimum():
    torch.manual_seed(0)
    model = smoke_model("cyclegan")
    for size in ((3, 5), (8, 200)):
        x = torch.rand(1, 3, *size) * 2 - 1
        assert (model.translate(x, tile=4) - model.translate(x)).abs().max().item() < 1e-4


def test_a_generator_whose_norms_apply_its_activations_tiles_to_the_same_result():
    """The trainer's networks may have their activations fused into the norms
    (gan_style.engine.kernels.fuse_norm_activations): the tiler lowers the norm with its activation."""
    from gan_style.engine.kernels import fuse_norm_activations

    torch.manual_seed(0)
    net = build_generator(GeneratorSpec("resnet_4blocks", ngf=4, antialias=True, antialias_up=True)).eval()
    x = torch.rand(1, 3, 76, 108) * 2 - 1
    with torch.inference_mode():
        whole = net(x)
    assert fuse_norm_activations(net) > 0
    with torch.inference_mode():
        assert (net(x) - whole).abs().max().item() < 1e-5
    assert (tiling.run_exact(net, x, 24) - whole).abs().max().item() < 1e-5
