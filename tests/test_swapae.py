"""The Swapping Autoencoder method: its objective, schedule of phases, swap command and Python API.
The generic contract (presets, resume, DDP, load) is in test_conformance.py; network parity with
the reference in test_golden_sae*.py; learning on real images in test_swapae_learning.py."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gan_style
from conftest import Streams
from gan_style.cli import main as cli_main
from gan_style.engine.contract import StepContext, config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.evaluation.swap_statistics import balanced_training_folder, criterion_misses, edges
from gan_style.methods.swapae import SwapAE, swap_pairs
from gan_style.nn.swapae_discriminators import PatchCooccurrenceDiscriminator


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def smoke(**overrides):
    return SwapAE(config_from_overrides(SwapAE, "smoke", overrides))


def test_swap_pairs_exchanges_neighbours():
    codes = torch.arange(6.0).view(6, 1)
    assert swap_pairs(codes).flatten().tolist() == [1, 0, 3, 2, 5, 4]


def test_paper_preset_is_the_references():
    c = config_from_overrides(SwapAE, "paper", {})
    assert (c.spatial_code_ch, c.global_code_ch, c.netE_num_downsampling_sp, c.netE_num_downsampling_gl) == (8, 2048, 4, 2)
    assert (c.lambda_L1, c.lambda_GAN, c.lambda_GAN_rec, c.lambda_PatchGAN, c.lambda_R1, c.lambda_patch_R1, c.R1_once_every) == (1, 1, 0.5, 1, 10, 1, 16)
    assert (c.lr, c.beta1, c.beta2, c.patch_num_crops, c.patch_min_scale, c.patch_max_scale) == (2e-3, 0, 0.99, 8, 1 / 8, 1 / 4)
    assert (c.data.load_size, c.data.crop_size, c.data.no_flip) == (256, 256, False)
    assert c.train.batch_size * c.train.max_steps == 25_000_000
    mountain = config_from_overrides(SwapAE, "mountain", {})
    assert (mountain.data.crop_size, mountain.lambda_patch_R1) == (512, 10.0)
    G, D = SwapAE(c).optimizers()
    ratio = 16 / 17  # StyleGAN2 appendix B
    assert G.networks == ("E", "G") and (G.lr, G.betas) == (2e-3, (0.0, 0.99))
    assert D.networks == ("D", "Dpatch") and D.lr == pytest.approx(2e-3 * ratio) and D.betas == pytest.approx((0.0, 0.99**ratio))
    with pytest.raises(ValueError, match="even"):
        config_from_overrides(SwapAE, "smoke", {"train": {"batch_size": 3}})


def test_swap_criterion_wants_texture_statistics_from_the_texture_and_edges_from_the_structure():
    right = {"colour": (0.3, 0.5), "Gram": (0.7, 1.1), "edges": (87.0, 85.0)}  # (to texture, to structure)
    assert criterion_misses({"photo structure, painting texture": right, "painting structure, photo texture": right}) == []
    kept_the_structure_image = {"colour": (0.5, 0.3), "Gram": (1.1, 0.7), "edges": (87.0, 85.0)}
    lost_the_layout = {"colour": (0.3, 0.5), "Gram": (0.7, 1.1), "edges": (85.0, 87.0)}
    assert criterion_misses({"a": kept_the_structure_image, "b": lost_the_layout}) == ["a: colour", "a: Gram", "b: edges"]
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    assert edges(images).shape == (2, 62 * 62) and edges(images, 4).shape == (2, 14 * 14)
    torch.testing.assert_close(edges(images, 4).mean(1), torch.zeros(2), atol=1e-5, rtol=0)  # normalised per image


def test_balanced_training_folder_links_every_painting_and_as_many_evenly_spaced_photos(tmp_path):
    root = tmp_path / "root"
    for domain, count in (("A", 2), ("B", 9)):
        (root / f"train{domain}").mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8)).save(root / f"train{domain}" / f"{domain}{index}.png")
    folder = balanced_training_folder(root, tmp_path / "balanced")
    assert sorted(p.name for p in (folder / "trainA").iterdir()) == ["A0.png", "A1.png"]
    assert sorted(p.name for p in (folder / "trainB").iterdir()) == ["B0.png", "B4.png"]
    assert (folder / "trainB" / "B4.png").resolve() == (root / "trainB" / "B4.png").resolve()


def test_d_and_g_alternate_and_r1_follows_every_16th_d_step(demo_cache):
    trainer = Trainer(smoke(train={"max_steps": 40, "lr_unit": "iteration"}), show_progress=False)
    ran = {}
    trainer.fit(lambda step, logs: ran.__setitem__(step, sorted({k.split("/")[1] for k in logs if k.startswith("loss/")})))
    assert ran[1] == ["D", "D_R1"] and ran[2] == ["G"] and ran[3] == ["D"] and ran[33] == ["D", "D_R1"]
    assert [s for s, p in ran.items() if "D_R1" in p] == [1, 33]


def test_the_objective_terms():
    method = smoke()
    nets = method.build_networks()
    streams = Streams()
    x = method.synthetic_batch(64, 2, torch.Generator().manual_seed(0))
    out = method.generator_step(StepContext(nets, {}, 1, 1, streams=streams), x)
    assert set(out.losses) == {"L1", "GAN_rec", "GAN_swap", "PatchGAN"}
    structure, texture = nets["E"](x["image"])
    rec = nets["G"](structure, texture, noise=torch.Generator().manual_seed(0))
    # eq. 1 (the noise strengths start at 0, so the noise does not matter here)
    torch.testing.assert_close(out.losses["L1"], F.l1_loss(rec, x["image"]))
    torch.testing.assert_close(out.losses["GAN_rec"], 0.5 * F.softplus(-nets["D"](rec)).mean())
    mix = nets["G"](swap_pairs(structure), texture)
    torch.testing.assert_close(out.carry["swap"], mix.detach(), rtol=1e-5, atol=1e-6)
    d_out = method.discriminator_step(StepContext(nets, {}, 0, 1, streams=Streams()), x)
    assert set(d_out.losses) == {"real", "rec", "swap", "patch_real", "patch_swap"}
    torch.testing.assert_close(d_out.losses["real"], 1.5 * F.softplus(-nets["D"](x["image"])).mean())
    r1 = method.r1_step(StepContext(nets, {}, 0, 1, streams=Streams()), x)
    real = x["image"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nets["D"](real).sum(), real)
    torch.testing.assert_close(r1.losses["R1"], 10 * 0.5 * 16 * grad.pow(2).flatten(1).sum(1).mean())


@pytest.fixture
def swapae_run(tmp_path, demo_cache):
    run = tmp_path / "run"
    Trainer(smoke(train={"max_steps": 2}), run, show_progress=False).fit()
    return run


def photo(colour, size=(64, 48)):
    image = Image.new("RGB", size, colour)
    image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), (255 - colour[0], 40, 90)), (8, 8))
    return image


def test_python_api_encode_decode_swap(swapae_run):
    model = gan_style.load(swapae_run, device="cpu")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    structure, texture = model.encode(x)
    assert structure.shape == (2, 8, 16, 16) and texture.shape == (2, 64)
    torch.testing.assert_close(texture.norm(dim=1), torch.ones(2), rtol=1e-4, atol=1e-4)  # L2-normalised
    decoded = model.decode(structure, texture)
    assert decoded.shape == x.shape
    a, b = photo((200, 30, 30)), photo((30, 30, 200), size=(80, 64))
    swapped = model.swap(a, b)
    assert isinstance(swapped, Image.Image) and swapped.size == a.size
    # alpha 0 keeps the structure image's own texture: the reconstruction
    own = model.swap(a, b, alpha=0.0)
    rec = model.translate(a, texture=a)
    assert list(own.getdata()) == list(rec.getdata())
    pairs = model.swap(x, torch.rand(2, 3, 64, 64) * 2 - 1)  # one texture per structure image
    assert pairs.shape == x.shape


def test_swap_command_single_alphas_and_grid(swapae_run, tmp_path, capsys):
    structures, textures = tmp_path / "s", tmp_path / "t"
    structures.mkdir()
    textures.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        photo(colour).save(structures / f"s{i}.png")
    for i, colour in enumerate([(30, 30, 200), (220, 220, 20), (90, 90, 90)]):
        photo(colour, size=(70, 70)).save(textures / f"t{i}.jpg")
    out = tmp_path / "out.png"
    base = ["swap", "--checkpoint", str(swapae_run), "--device", "cpu"]
    assert cli_main([*base, "--structure", str(structures / "s0.png"), "--texture", str(textures / "t0.jpg"), "--output", str(out)]) == 0
    assert Image.open(out).size == (64, 48)
    assert cli_main([*base, "--structure", str(structures / "s0.png"), "--texture", str(textures / "t0.jpg"), "--output", str(out), "--alpha", "0", "0.5", "1"]) == 0
    assert all((tmp_path / f"out_alpha{a}.png").is_file() for a in ("0", "0.5", "1"))
    grid = tmp_path / "grid.png"
    assert cli_main([*base, "--structure", str(structures), "--texture", str(textures), "--grid", str(grid), "--size", "32"]) == 0
    assert Image.open(grid).size == (4 * 32, 3 * 32)
    capsys.readouterr()
    status = cli_main([*base, "--structure", str(structures / "s0.png"), "--texture", str(textures / "t0.jpg"), "--output", str(structures / "s0.png")])
    err = capsys.readouterr().err
    assert status == 2 and "one of the input images" in err and "Traceback" not in err


def test_the_reference_checkpoint_loads_and_swaps():
    from conftest import GOLDEN, require_shared

    path = require_shared(GOLDEN / "sae" / "latest_checkpoint.pth")
    cases = torch.load(GOLDEN / "sae" / "cases.pt", weights_only=True)
    model = gan_style.load(path, device="cpu")
    assert model.method == "swapae" and "reference checkpoint" in model.description

    def close(out, ref):
        assert (out - ref).abs().max().item() <= 1e-4 * min(1.0, ref.abs().max().item())

    x = cases["x"]
    structure, texture = model.encode(x)
    close(structure, cases["E.structure_code"])
    close(model.decode(structure, texture), cases["G.rec"])
    close(model.swap(x[:1], x[1:2]), cases["G.swap_s0_t1"])


def test_recomputing_the_patch_features_gives_the_same_gradients_r1_included():
    torch.manual_seed(0)
    method = smoke()
    nets = method.build_networks()
    kept = PatchCooccurrenceDiscriminator(nets["Dpatch"].spec, recompute=False)
    kept.load_state_dict(nets["Dpatch"].state_dict())
    assert nets["Dpatch"].recompute  # the default: memory, not numerics
    x = method.synthetic_batch(64, 2, torch.Generator().manual_seed(0))

    def gradients(Dpatch, step):
        Dpatch.zero_grad(set_to_none=True)
        out = step(StepContext({**nets, "Dpatch": Dpatch}, {}, 0, 1, streams=Streams()), x)
        sum(v for k, v in out.losses.items() if "patch" in k).backward()
        return [p.grad.clone() for p in Dpatch.parameters() if p.grad is not None]

    for step in (method.discriminator_step, method.r1_step):
        recomputed, stored = gradients(nets["Dpatch"], step), gradients(kept, step)
        assert len(recomputed) == len(stored) > 0
        for a, b in zip(recomputed, stored):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
