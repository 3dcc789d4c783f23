"""gan-style translate: any size and aspect, pad/resize fitting, tiling, batches, checkpoints."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from gan_style.cli import main as cli_main
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.translate import ImageTranslator, reference_size, run_padded, run_tiled, translate_images


def write_image(path, width, height, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def small_generator(kind="resnet_6blocks"):
    torch.manual_seed(0)
    return build_generator(GeneratorSpec(kind, ngf=4)).eval()


def test_reference_size_rounds_half_to_even():
    assert reference_size(202, 150) == (200, 152)
    assert reference_size(203, 151) == (204, 152)
    assert reference_size(1, 1) == (4, 4)


def test_pad_keeps_the_exact_input_size(tmp_path):
    net = small_generator()
    translator = ImageTranslator(net, 4, "test")
    inputs = [write_image(tmp_path / "odd.png", 203, 151), write_image(tmp_path / "tall.jpg", 37, 90, seed=1)]
    written = translate_images(translator, inputs, tmp_path / "out", fit="pad", progress=False)
    assert [Image.open(p).size for p in written] == [(203, 151), (37, 90)]


def test_pad_is_the_network_on_the_reflect_padded_image():
    net = small_generator()
    x = torch.rand(1, 3, 30, 41) * 2 - 1
    with torch.no_grad():
        out = run_padded(net, x, 4)
        padded = torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect")
        assert torch.equal(out, net(padded)[..., :30, :41])


def test_unet_pads_to_its_own_multiple():
    net = small_generator("unet_128")
    with torch.no_grad():
        out = run_padded(net, torch.rand(1, 3, 50, 70) * 2 - 1, net.size_multiple)
    assert out.shape == (1, 3, 50, 70)


def test_tiles_blend_to_the_whole_image_result_for_local_networks():
    torch.manual_seed(0)
    # Receptive radius 2: the discarded quarter of a 16 px overlap (4 px) covers it.
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1), nn.Tanh()).eval()
    x = torch.rand(1, 3, 100, 172) * 2 - 1
    with torch.no_grad():
        whole = net(x)
        tiled = run_tiled(net, x, multiple=4, tile=48, overlap=16)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max().item() < 1e-5


def test_tiles_of_an_instance_norm_generator_have_no_seams():
    net = small_generator()
    image = torch.linspace(-1, 1, 160)[None, None, None, :].expand(1, 3, 96, 160).contiguous()
    with torch.no_grad():
        tiled = run_tiled(net, image, multiple=4, tile=64, overlap=32)
        whole = net(image)
    assert tiled.shape == whole.shape
    # Neighbouring columns differ no more across tile borders than anywhere in the whole pass.
    column_jumps = (tiled[..., 1:] - tiled[..., :-1]).abs().amax(dim=(0, 1, 2))
    assert column_jumps.max() <= 2 * (whole[..., 1:] - whole[..., :-1]).abs().max() + 1e-3


def test_translate_cli_folder_with_batches_tiles_and_a_training_checkpoint(tmp_path, demo_cache):
    run = tmp_path / "run"
    status = cli_main(["train", "--run-dir", str(run), "--set", "train.max_steps=2", "--set", "ngf=4", "--set", "ndf=4",
                       "--set", "data.max_dataset_size=2"])
    assert status == 0
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    write_image(images / "a.png", 64, 48)
    write_image(images / "b.png", 64, 48, seed=2)
    write_image(images / "sub" / "c.jpg", 90, 70, seed=3)
    out = tmp_path / "out"
    assert cli_main(["translate", "--checkpoint", str(run), "--input", str(images), "--output", str(out), "--batch-size", "2", "--quiet"]) == 0
    assert Image.open(out / "a.png").size == (64, 48)
    assert Image.open(out / "sub" / "c.png").size == (90, 70)
    tiled = tmp_path / "tiled"
    assert cli_main(["translate", "--checkpoint", str(run / "checkpoints" / "latest.pt"), "--input", str(images / "sub" / "c.jpg"),
                     "--output", str(tiled), "--tile", "32", "--tile-overlap", "16", "--direction", "BtoA", "--quiet"]) == 0
    assert Image.open(tiled / "c.png").size == (90, 70)


def test_translate_cli_errors_name_the_problem(tmp_path, capsys):
    assert cli_main(["translate", "--checkpoint", str(tmp_path / "missing.pth"), "--input", ".", "--output", str(tmp_path)]) == 2
    assert "missing.pth" in capsys.readouterr().err
