"""CUT / FastCUT / SinCUT as training methods: presets, network sizes, the shared forward and its
reused encoder features against the reference's explicit recomputation, flip equivariance, exact
resume, zoom-and-patch sampling, translate (the reference's end-to-end PNG; SinCUT at any size)
and the benchmark command. Small networks on CPU; the real-data training runs are in
test_cut_training.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import GOLDEN, Streams, require_shared
from gan_style.cli import main as cli_main
from gan_style.data.sharding import batch_group, shard_batches
from gan_style.data.single_image import SingleImageDataConfig, SingleImageDataset
from gan_style.engine.contract import StepContext, config_from_overrides
from gan_style.losses.patchnce import multilayer_patch_nce_loss
from gan_style.methods import get_method
from gan_style.methods.cut import CUT, CUTUnpairedDataset, FastCUT, SinCUT, mirrored_patch_ids
from gan_style.nn.layers import count_parameters

CUT_GOLDEN = GOLDEN / "cut"
TINY_CUT = {"ngf": 8, "ndf": 8, "num_patches": 32}




def tiny(method_cls, preset=None, **overrides):
    return method_cls(config_from_overrides(method_cls, preset, {**TINY_CUT, **overrides}))


def forced_flip_generator(flip: bool) -> torch.Generator:
    """A generator whose first draw makes the forward flip (or not)."""
    for seed in range(100):
        generator = torch.Generator().manual_seed(seed)
        if bool(torch.rand((), generator=generator.clone_state()) < 0.5) == flip:
            return generator
    raise AssertionError("no seed found")


# -- presets and networks ---------------------------------------------------------------------------
def test_registry_names_and_presets():
    assert get_method("cut") is CUT and get_method("fastcut") is FastCUT and get_method("sincut") is SinCUT
    cut = config_from_overrides(CUT, None, {})
    assert (cut.nce_idt, cut.lambda_NCE, cut.flip_equivariance, cut.train.n_epochs, cut.train.n_epochs_decay) == (True, 1.0, False, 200, 200)
    assert (cut.lr, cut.beta1, cut.beta2, cut.nce_T, cut.num_patches, cut.netF_nc) == (2e-4, 0.5, 0.999, 0.07, 256, 256)
    assert cut.nce_layers == (0, 4, 8, 12, 16) and cut.gan_mode == "lsgan" and cut.antialias and cut.antialias_up
    assert (cut.data.load_size, cut.data.crop_size, cut.train.batch_size, cut.init_type, cut.init_gain) == (286, 256, 1, "xavier", 0.02)
    fast = config_from_overrides(FastCUT, None, {})
    assert (fast.nce_idt, fast.lambda_NCE, fast.flip_equivariance, fast.train.n_epochs, fast.train.n_epochs_decay) == (False, 10.0, True, 150, 50)
    assert config_from_overrides(CUT, "fastcut", {}) == fast
    sin = config_from_overrides(SinCUT, None, {})
    assert (sin.netG, sin.netD, sin.ngf, sin.ndf, sin.gan_mode) == ("stylegan2", "stylegan2", 10, 8, "nonsaturating")
    assert (sin.lambda_NCE, sin.nce_layers, sin.num_patches, sin.nce_includes_all_negatives_from_minibatch) == (4.0, (0, 2, 4), 1, True)
    assert (sin.lambda_R1, sin.lambda_identity, sin.lr, sin.beta1, sin.beta2, sin.train.batch_size) == (1.0, 1.0, 2e-3, 0.0, 0.99, 16)
    assert (sin.data.crop_size, sin.data.load_size, sin.data.random_scale_max) == (64, 1024, 3.0)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cut", {"G": 11_378_179, "D": 2_764_737, "F": 560_384}),
        ("fastcut", {"G": 11_378_179, "D": 2_764_737, "F": 560_384}),
        ("sincut", {"G": 3_068_404, "D": 5_885_473, "F": 280_832}),
    ],
)
def test_default_networks_have_the_full_size_parameter_counts(name, expected):
    method_cls = get_method(name)
    with torch.device("meta"):
        networks = method_cls(config_from_overrides(method_cls, None, {})).build_networks()
    assert {k: count_parameters(v) for k, v in networks.items()} == expected


def test_antialiasing_switches_off():
    G = tiny(CUT, antialias=False, antialias_up=False).build_networks()["G"]
    assert not any(type(m).__name__ in ("Downsample", "Upsample") for m in G.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())


def test_one_adam_updates_G_and_the_heads():
    method = tiny(CUT)
    specs = {spec.name: spec for spec in method.optimizers()}
    assert specs["G"].networks == ("G", "F") and specs["D"].networks == ("D",)
    assert [phase.optimizer for phase in method.phases()] == ["D", "G"]  # the reference's order
    assert tiny(CUT, netF="sample").optimizers()[1].networks == ("G",)  # parameter-free sampler


# -- the shared forward: reused features equal the reference's recomputation -----------------------
@pytest.mark.parametrize("layers", [(0, 4, 8, 12, 16), (0, 2), (2, 4)])
def test_kept_source_features_equal_a_fresh_encoder_pass(layers):
    """The keys' features read off G's forward are those of the reference's separate encoder pass
    over x and over y (also for layers followed by an in-place ReLU)."""
    method = tiny(CUT, nce_layers=list(layers))
    streams = Streams()
    nets = method.build_networks()
    batch = method.synthetic_batch(48, 2, torch.Generator().manual_seed(0))
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    with torch.no_grad():
        from_A = nets["G"].encode(batch["A"], list(layers))
        from_B = nets["G"].encode(batch["B"], list(layers))
    for kept, a, b in zip(carry["source_features"], from_A, from_B):
        assert torch.equal(kept, torch.cat([a, b]))
    assert torch.equal(carry["fake"], nets["G"](torch.cat([batch["A"], batch["B"]])))


def reference_nce(method, nets, source, translated, patch_rng, flipped=False):
    """calculate_NCE_loss of the reference, written out: fresh encoder passes for queries and keys."""
    c = method.config
    queries = nets["G"].encode(translated, list(c.nce_layers))
    if flipped:
        queries = [q.flip(3) for q in queries]
    keys = nets["G"].encode(source, list(c.nce_layers))
    key_proj, ids = nets["F"](keys, c.num_patches, generator=patch_rng)
    query_proj, _ = nets["F"](queries, c.num_patches, patch_ids=ids)
    return c.lambda_NCE * multilayer_patch_nce_loss(query_proj, key_proj, c.nce_T, c.nce_includes_all_negatives_from_minibatch)


def test_cut_losses_match_the_reference_definition():
    method = tiny(CUT)
    streams = Streams()
    nets = method.build_networks()
    batch = method.synthetic_batch(32, 2, torch.Generator().manual_seed(1))
    patch_rng = streams["patch_ids"].clone_state()
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    out = method.generator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    fake = nets["G"](torch.cat([batch["A"], batch["B"]]))
    nce_X = reference_nce(method, nets, batch["A"], fake[:2], patch_rng)
    nce_Y = reference_nce(method, nets, batch["B"], fake[2:], patch_rng)
    torch.testing.assert_close(out.logs["NCE_X"], nce_X.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["NCE_Y"], nce_Y.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["NCE"], 0.5 * (nce_X + nce_Y), rtol=1e-5, atol=1e-6)
    lsgan = ((nets["D"](fake[:2]) - 1) ** 2).mean()
    torch.testing.assert_close(out.losses["G_GAN"], lsgan)
    assert out.carry["fake"] is None and out.carry["source_features"] is None  # no graph kept for visuals


@pytest.mark.parametrize("flip", [True, False])
def test_fastcut_flip_equivariance_matches_the_reference(flip):
    method = tiny(FastCUT)
    streams = Streams()
    streams["flip"] = forced_flip_generator(flip)
    nets = method.build_networks()
    batch = method.synthetic_batch(32, 1, torch.Generator().manual_seed(2))
    patch_rng = streams["patch_ids"].clone_state()
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    assert carry["flipped"] is flip and carry["idt_B"] is None
    real_A = batch["A"].flip(3) if flip else batch["A"]
    fake_B = nets["G"](real_A)
    assert torch.equal(carry["fake_B"], fake_B)
    out = method.generator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    expected = reference_nce(method, nets, batch["A"], fake_B, patch_rng, flipped=flip)
    torch.testing.assert_close(out.losses["NCE"], expected, rtol=1e-5, atol=1e-5)
    assert set(out.losses) == {"G_GAN", "NCE"}
    # and its gradients: a flipped step reads the queries at mirrored positions, not flipped maps
    trained = [p for name in ("G", "F") for p in nets[name].parameters()]
    ours = torch.autograd.grad(out.losses["NCE"], trained, allow_unused=True)
    theirs = torch.autograd.grad(expected, trained, allow_unused=True)
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mirrored_patch_ids_read_a_flipped_map():
    feature = torch.randn(2, 5, 4, 7)
    ids = torch.randperm(4 * 7)[:11]
    flat = lambda f: f.flatten(2)  # noqa: E731  (b, c, y * W + x)
    assert torch.equal(flat(feature)[..., mirrored_patch_ids(ids, 7)], flat(feature.flip(3))[..., ids])


def test_discriminator_loss_is_halved_lsgan():
    method = tiny(CUT)
    streams = Streams()
    nets = method.build_networks()
    batch = method.synthetic_batch(32, 1, torch.Generator().manual_seed(3))
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    out = method.discriminator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    expected = 0.5 * ((nets["D"](carry["fake_B"].detach()) ** 2).mean() + ((nets["D"](batch["B"]) - 1) ** 2).mean())
    torch.testing.assert_close(out.losses["D"], expected)


def test_sincut_losses_add_r1_and_identity():
    method = SinCUT(config_from_overrides(SinCUT, None, {"ngf": 2, "ndf": 1, "train.batch_size": 4}))
    streams = Streams()
    nets = method.build_networks()
    batch = method.synthetic_batch(96, 4, torch.Generator().manual_seed(4))
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    d_out = method.discriminator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    real = batch["B"].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nets["D"](real).sum(), real)
    torch.testing.assert_close(d_out.losses["D_R1"], 0.5 * grad.pow(2).flatten(1).sum(1).mean())
    g_out = method.generator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    assert set(g_out.losses) == {"G_GAN", "NCE", "idt"}
    torch.testing.assert_close(g_out.losses["idt"], (carry["idt_B"] - batch["B"]).abs().mean())


def test_cut_data_epoch_is_A_plus_B_with_fixed_crops_when_decaying(demo_cache):
    from gan_style.data.config import DataConfig

    data = DataConfig(root="demo", load_size=36, crop_size=32, max_dataset_size=4)
    dataset = CUTUnpairedDataset(data, seed=0, n_epochs=2, fixed_crop_when_decaying=True)
    assert len(dataset) == 8
    dataset.set_epoch(2)
    dataset[0]
    assert dataset.transform_A.load_size == 36
    dataset.set_epoch(3)
    item = dataset[0]
    assert dataset.transform_A.load_size == 32 and item["A"].shape == (3, 32, 32)


# -- zoom-and-patch sampling ------------------------------------------------------------------------
@pytest.fixture
def coordinate_images(tmp_path):
    """A 240x180 image whose red channel is x and green channel is y, in both domains."""
    ys, xs = np.mgrid[0:180, 0:240]
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    for domain in "AB":
        (tmp_path / f"train{domain}").mkdir()
        Image.fromarray(pixels).save(tmp_path / f"train{domain}" / f"{domain}.png")
    return tmp_path


def test_batch_groups_follow_the_trainer_sharding():
    for world_size in (1, 2, 3):
        for rank in range(world_size):
            for batch in shard_batches(list(range(48)), 4, rank, world_size):
                groups = {batch_group(i, 4, world_size)[0] for i in batch}
                slots = sorted(batch_group(i, 4, world_size)[1] for i in batch)
                assert len(groups) == 1 and slots == list(range(len(batch)))


def test_zoom_and_patch_crops(coordinate_images):
    config = SingleImageDataConfig(root=str(coordinate_images), crop_size=16, no_flip=True, length=64)
    dataset = SingleImageDataset(config, seed=0, batch_size=4)
    assert dataset.shuffle is False

    def scale_and_cell(item):
        red, green = item["A"][0] * 127.5 + 127.5, item["A"][1] * 127.5 + 127.5  # back to 0..255
        zoom = (red[:, -1] - red[:, 0]).mean() / 15  # image x per crop pixel = 1 / zoom factor
        return float(zoom), (float(red[0, 0]), float(green[0, 0]))

    batches = [[scale_and_cell(dataset[4 * b + k]) for k in range(4)] for b in range(4)]
    for batch in batches:
        scales = [s for s, _ in batch]
        assert max(scales) - min(scales) < 0.05  # one zoom per batch
        assert 1 - 0.05 <= scales[0] <= 3 + 0.05
        corners = [c for _, c in batch]
        assert len(set(corners)) == 4
    assert len({round(batch[0][0], 2) for batch in batches}) > 1  # and a new one per batch
    # reproducible per (seed, epoch, index), different in another epoch
    assert torch.equal(dataset[5]["A"], dataset[5]["A"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5]["A"], dataset[(0, 5)]["A"])
    # no zoom: crops come from distinct grid cells of the image as stored
    flat = SingleImageDataset(dataclasses.replace(config, random_scale_max=1.0), seed=0, batch_size=8)
    cells = set()
    for index in range(8):
        red, green = (flat[index]["A"][:2, 0, 0] * 127.5 + 127.5).round().tolist()
        cells.add((int(red) // 16, int(green) // 16))
    assert len(cells) == 8


# -- translate and bench ----------------------------------------------------------------------------
def test_translate_fit_resize_with_the_reference_cut_generator(tmp_path):
    checkpoint = require_shared(CUT_GOLDEN / "CUT_ngf16_ndf16" / "latest_net_G.pth")
    source = require_shared(GOLDEN / "cyclegan" / "e2e_input.png")
    status = cli_main(["translate", "--checkpoint", str(checkpoint), "--input", str(source), "--output", str(tmp_path), "--fit", "resize", "--quiet"])
    assert status == 0
    ours = np.asarray(Image.open(tmp_path / "e2e_input.png")).astype(int)
    expected = np.asarray(Image.open(CUT_GOLDEN / "e2e_expected.png")).astype(int)
    assert ours.shape == expected.shape == (152, 200, 3)
    assert np.abs(ours - expected).max() <= 1


def test_sincut_run_translates_any_size(tmp_path):
    rng = np.random.default_rng(0)
    for domain in "AB":
        (tmp_path / "data" / f"train{domain}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "data" / f"train{domain}" / "x.png")
    run = tmp_path / "run"
    status = cli_main([
        "train", "--method", "sincut", "--data", str(tmp_path / "data"), "--run-dir", str(run),
        "--set", "ngf=2", "--set", "ndf=1", "--set", "data.crop_size=32", "--set", "train.batch_size=2",
        "--set", "train.max_steps=2", "--set", "train.log_every=1",
    ])
    assert status == 0
    Image.fromarray(rng.integers(0, 255, (97, 151, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    for extra in ([], ["--tile", "64", "--tile-overlap", "16"]):
        out = tmp_path / f"out{len(extra)}"
        assert cli_main(["translate", "--checkpoint", str(run), "--input", str(tmp_path / "photo.png"), "--output", str(out), "--quiet", *extra]) == 0
        assert Image.open(out / "photo.png").size == (151, 97)


@pytest.mark.parametrize("name, widths", [("cut", ["ngf=4", "ndf=4"]), ("fastcut", ["ngf=4", "ndf=4"]), ("sincut", ["ngf=2", "ndf=1"])])
def test_bench_command_runs(name, widths, capsys):
    args = ["bench", name, "--size", "32", "--steps", "1", "--warmup", "0", "--json"]
    for setting in widths:
        args += ["--set", setting]
    assert cli_main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["method"] == name and result["sec_per_iter"] > 0
