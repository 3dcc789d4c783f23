"""MUNIT the method: its presets, each loss term against its definition written out, the batched
decoder, the translate flags (--num-styles, --seed, --style-image) and the Python API. The generic
contract (presets build, resume, DDP, load) is in test_conformance.py; the networks against the
reference's goldens in test_golden_munit.py; learning on real images in test_munit_training.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gan_style
from conftest import GOLDEN, Streams, require_shared
from gan_style.cli import main as cli_main
from gan_style.engine.contract import StepContext, config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods.munit import MUNIT, MUNITAutoEncoder, config_overrides_from_specs, decode_batched, random_style, random_styles
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.munit_networks import MUNITGenerator, MUNITGeneratorSpec


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def smoke(**overrides) -> MUNIT:
    return MUNIT(config_from_overrides(MUNIT, "smoke", overrides))


def test_paper_preset_is_the_references():
    c = config_from_overrides(MUNIT, "paper", {})
    assert (c.gen_dim, c.mlp_dim, c.style_dim, c.n_downsample, c.n_res, c.activ, c.pad_type) == (64, 256, 8, 2, 4, "relu", "reflect")
    assert (c.dis_dim, c.dis_n_layer, c.dis_norm, c.dis_activ, c.num_scales, c.gan_mode) == (64, 4, "none", "lrelu", 3, "lsgan")
    assert (c.gan_w, c.recon_x_w, c.recon_s_w, c.recon_c_w, c.recon_x_cyc_w, c.vgg_w) == (1, 10, 1, 1, 0, 0)
    assert (c.gen_init, c.dis_init, c.dis_init_gain, c.spectral_norm) == ("kaiming", "normal", 0.02, False)
    t = c.train
    assert (t.batch_size, t.max_steps, t.lr_unit, t.lr_policy, t.lr_step_size, t.lr_gamma) == (1, 1_000_000, "iteration", "step", 100_000, 0.5)
    assert (c.data.load_size, c.data.crop_size, c.data.no_flip) == (256, 256, False)
    D, G = MUNIT(c).optimizers()
    for spec, nets in ((D, ("D_A", "D_B")), (G, ("G_A", "G_B"))):
        assert (spec.networks, spec.lr, spec.betas, spec.weight_decay, spec.kind) == (nets, 1e-4, (0.5, 0.999), 1e-4, "adam")
    assert [p.name for p in MUNIT(c).phases()] == ["D", "G"]  # one D update, then one G update
    assert config_from_overrides(MUNIT, "summer2winter", {}).recon_x_cyc_w == 10
    street = config_from_overrides(MUNIT, "synthia2cityscape", {})
    assert (street.recon_x_cyc_w, street.vgg_w, street.data.crop_size) == (10, 1, 512)
    later = config_from_overrides(MUNIT, "imaginaire", {})
    assert (later.spectral_norm, later.gan_mode, later.gen_init, later.dis_init, later.train.lr_policy) == (True, "hinge", "orthogonal", "orthogonal", "constant")
    assert (later.train.ema_decay, later.train.ema_start_step) == (0.9999, 1000)
    D, G = MUNIT(later).optimizers()
    assert (D.lr, G.lr) == (4e-4, 1e-4)
    with pytest.raises(ValueError, match="too small"):
        config_from_overrides(MUNIT, "paper", {"data": {"load_size": 32, "crop_size": 32}})


def test_the_networks_are_initialised_as_the_release():
    torch.manual_seed(0)
    nets = MUNIT(config_from_overrides(MUNIT, "paper", {})).build_networks()
    assert isinstance(nets["G_A"], MUNITAutoEncoder) and set(nets["G_A"].state_dict()) == set(MUNITGenerator().state_dict())
    conv = nets["G_A"].enc_content.model[1].conv.weight  # kaiming normal, fan-in
    assert conv.std().item() == pytest.approx((2 / conv[0].numel()) ** 0.5, rel=0.05)
    assert nets["D_A"].cnns[0][1].conv.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_the_loss_terms_equal_their_definitions():
    """Every term of eq. 5 (and the optional cycle and perceptual terms) recomputed by hand, with
    separate (unbatched) decoder calls and the same style draws."""
    method = smoke(recon_x_cyc_w=10.0, vgg_w=1.0, vgg_weights="random")
    torch.manual_seed(0)
    nets = method.build_networks()
    batch = method.synthetic_batch(32, 2, torch.Generator().manual_seed(1))
    streams = Streams()
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=streams), batch)
    d = method.discriminator_step(StepContext(nets, carry, 0, 1, streams=streams), batch)
    g = method.generator_step(StepContext(nets, dict(carry), 0, 1, streams=streams), batch)

    G_A, G_B, D_A, D_B = (nets[n] for n in ("G_A", "G_B", "D_A", "D_B"))
    x_a, x_b = batch["A"], batch["B"]
    s_a_rand, s_b_rand = torch.randn(4, 8, 1, 1, generator=torch.Generator().manual_seed(0)).split(2)  # s ~ N(0, I)
    c_a, s_a = G_A.encode(x_a)
    c_b, s_b = G_B.encode(x_b)
    x_ba, x_ab = G_A.decode(c_b, s_a_rand), G_B.decode(c_a, s_b_rand)
    c_b_recon, s_a_recon = G_A.encode(x_ba)
    c_a_recon, s_b_recon = G_B.encode(x_ab)

    def lsgan(outputs, target):
        return sum(((o - target) ** 2).mean() for o in outputs)

    vgg = method.perceptual_network(x_a.device)

    def perceptual(image, target):
        features, wanted = (F.instance_norm(vgg(x, ["relu5_3"])["relu5_3"]) for x in (image, target))
        return ((features - wanted) ** 2).mean()

    expected = {
        "recon_x_A": 10 * (G_A.decode(c_a, s_a) - x_a).abs().mean(),  # eq. 1
        "recon_x_B": 10 * (G_B.decode(c_b, s_b) - x_b).abs().mean(),
        "recon_c_A": (c_a_recon - c_a).abs().mean(),  # eq. 2
        "recon_c_B": (c_b_recon - c_b).abs().mean(),
        "recon_s_A": (s_a_recon - s_a_rand).abs().mean(),  # eq. 3
        "recon_s_B": (s_b_recon - s_b_rand).abs().mean(),
        "adv_A": lsgan(D_A(x_ba), 1),  # eq. 4, least squares, summed over the 3 scales
        "adv_B": lsgan(D_B(x_ab), 1),
        "cyc_x_A": 10 * (G_A.decode(c_a_recon, s_a) - x_a).abs().mean(),
        "cyc_x_B": 10 * (G_B.decode(c_b_recon, s_b) - x_b).abs().mean(),
        "vgg_A": perceptual(x_ba, x_b),
        "vgg_B": perceptual(x_ab, x_a),
    }
    assert g.losses.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(g.losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert d.losses.keys() == {"D_A", "D_B"}
    torch.testing.assert_close(d.losses["D_A"], lsgan(D_A(x_ba), 0) + lsgan(D_A(x_a), 1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d.losses["D_B"], lsgan(D_B(x_ab), 0) + lsgan(D_B(x_b), 1), rtol=1e-5, atol=1e-7)
    assert all(g.carry[k] is None for k in ("c_a", "s_a", "s_a_rand")) and not g.carry["x_ab"].requires_grad


def test_hinge_and_spectral_norm_of_the_imaginaire_preset():
    method = MUNIT(config_from_overrides(MUNIT, "smoke", {"spectral_norm": True, "gan_mode": "hinge", "gen_init": "orthogonal", "dis_init": "orthogonal"}))
    nets = method.build_networks()
    layers = [m for net in nets.values() for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    batch = method.synthetic_batch(32, 1, torch.Generator().manual_seed(0))
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=Streams()), batch)
    d = method.discriminator_step(StepContext(nets, carry, 0, 1, streams=Streams()), batch)
    fake, real = nets["D_A"](carry["x_ba"].detach()), nets["D_A"](batch["A"])
    torch.testing.assert_close(d.losses["D_A"], sum(F.relu(1 + f).mean() + F.relu(1 - r).mean() for f, r in zip(fake, real)))
    g = method.generator_step(StepContext(nets, dict(carry), 0, 1, streams=Streams()), batch)
    torch.testing.assert_close(g.losses["adv_A"], sum(-f.mean() for f in nets["D_A"](carry["x_ba"])))
    # the visuals run in eval mode: spectral norm's power iteration does not advance
    before = {k: v.clone() for k, v in nets["G_B"].state_dict().items()}
    method.visuals(batch, g.carry, nets)
    assert all(torch.equal(v, nets["G_B"].state_dict()[k]) for k, v in before.items()) and nets["G_B"].training


def test_the_batched_decode_equals_separate_decodes():
    torch.manual_seed(0)
    G = MUNITAutoEncoder(MUNITGeneratorSpec(dim=8, mlp_dim=16, n_res=2))
    contents = [torch.randn(2, 32, 8, 8), torch.randn(3, 32, 8, 8)]
    styles = [torch.randn(2, 8, 1, 1), torch.randn(3, 8, 1, 1)]
    batched = decode_batched(G, list(zip(contents, styles)))
    for out, c, s in zip(batched, contents, styles):
        torch.testing.assert_close(out, G.decode(c, s), rtol=1e-5, atol=1e-6)
    # contents of different sizes: separate calls
    other = decode_batched(G, [(contents[0], styles[0]), (torch.randn(1, 32, 4, 6), styles[1][:1])])
    assert other[1].shape == (1, 3, 16, 24)


def test_visuals_show_the_same_random_styles_every_time():
    method = smoke()
    nets = method.build_networks()
    batch = method.synthetic_batch(32, 2, torch.Generator().manual_seed(0))
    carry = method.forward(StepContext(nets, {}, 0, 1, streams=Streams()), batch)
    with torch.no_grad():
        first, second = method.visuals(batch, carry, nets), method.visuals(batch, carry, nets)
    assert list(first)[:4] == ["real_A", "rec_A", "AtoB_style0", "AtoB_style1"] and "BtoA_style5" in first
    assert all(torch.equal(first[k], second[k]) for k in first) and all(v.shape[0] == 1 for v in first.values())
    expected = nets["G_B"].decode(nets["G_A"].enc_content(batch["A"][:1]), random_style(8, 0, 3))
    torch.testing.assert_close(first["AtoB_style3"], expected)


def test_random_styles_are_one_stream():
    codes = random_styles(5, 8, seed=3)
    assert codes.shape == (5, 8, 1, 1)
    assert torch.equal(random_styles(2, 8, seed=3, start=3), codes[3:]) and torch.equal(random_style(8, 3, 4), codes[4:])
    assert not torch.equal(random_styles(1, 8, seed=4), codes[:1])


# -- inference ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def munit_run(tmp_path_factory):
    import os

    cache = tmp_path_factory.getbasetemp() / "gan_style_cache"
    previous = os.environ.get("GAN_STYLE_CACHE")
    os.environ["GAN_STYLE_CACHE"] = str(cache)
    try:
        run = tmp_path_factory.mktemp("munit") / "run"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(smoke(train={"max_steps": 2}), run, show_progress=False).fit()
    finally:
        if previous is None:
            os.environ.pop("GAN_STYLE_CACHE", None)
        else:
            os.environ["GAN_STYLE_CACHE"] = previous
    return run


def photo(colour, size=(40, 32)):
    image = Image.new("RGB", size, colour)
    image.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), (255 - colour[0], 40, 90)), (6, 6))
    return image


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def expected_png(model, image, style):
    """What the translation of ``image`` with ``style`` codes writes (8-bit)."""
    out = model.translate(image, style=style)
    return np.asarray(out, dtype=np.int16)


def translate_cli(run, source, output, *flags):
    return cli_main(["translate", "--checkpoint", str(run), "--input", str(source), "--output", str(output), "--quiet", "--device", "cpu", *flags])


def test_num_styles_writes_n_different_outputs_with_the_same_styles_for_every_image(munit_run, tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    photo((200, 30, 30)).save(images / "a.png")
    photo((30, 200, 30), size=(48, 36)).save(images / "b.jpg")
    assert translate_cli(munit_run, images, tmp_path / "out", "--num-styles", "3", "--seed", "7") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}_style{k}.png" for n in "ab" for k in range(3)]
    model = gan_style.load(munit_run, device="cpu")
    for name in "ab":
        outs = [pixels(tmp_path / "out" / f"{name}_style{k}.png") for k in range(3)]
        assert all(np.abs(outs[i] - outs[j]).mean() > 0.1 for i in range(3) for j in range(i)), "different styles, different images"
        source = Image.open(images / f"{name}.{'png' if name == 'a' else 'jpg'}").convert("RGB")
        for k, out in enumerate(outs):  # style k of seed 7, the same code for both images
            assert np.abs(out - expected_png(model, source, random_style(8, 7, k))).max() <= 1
    # --seed defaults to 0, and a second run gives the same files
    assert translate_cli(munit_run, images, tmp_path / "again", "--num-styles", "2") == 0
    source = Image.open(images / "a.png").convert("RGB")
    assert np.abs(pixels(tmp_path / "again" / "a_style1.png") - expected_png(model, source, random_style(8, 0, 1))).max() <= 1


def test_style_image_translates_with_the_example_style(munit_run, tmp_path):
    image, painting = tmp_path / "photo.png", tmp_path / "painting.png"
    photo((200, 30, 30)).save(image)
    photo((20, 20, 220), size=(64, 64)).save(painting)
    for direction in ("AtoB", "BtoA"):
        out = tmp_path / direction
        assert translate_cli(munit_run, image, out, "--style-image", str(painting), "--direction", direction) == 0
        model = gan_style.load(munit_run, device="cpu")
        target = model.networks["G_B" if direction == "AtoB" else "G_A"]
        with torch.no_grad():
            code = target.enc_style(model._as_tensor(Image.open(painting).convert("RGB")))
        got = pixels(out / "photo.png")
        want = np.asarray(model.translate(Image.open(image).convert("RGB"), direction=direction, style=code), dtype=np.int16)
        assert np.abs(got - want).max() <= 1


def test_style_flags_are_checked(munit_run, tmp_path, capsys):
    image = tmp_path / "photo.png"
    photo((200, 30, 30)).save(image)

    def one_error_line():
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    assert translate_cli(munit_run, image, tmp_path / "o", "--num-styles", "0") == 2
    assert "--num-styles must be 1 or more" in one_error_line()
    assert translate_cli(munit_run, image, tmp_path / "o", "--style-image", str(tmp_path / "missing.jpg")) == 2
    assert "--style-image" in one_error_line()
    assert translate_cli(munit_run, image, tmp_path / "o", "--style-image", str(image), "--num-styles", "2") == 2
    assert "use one or the other" in one_error_line()
    # a model without styles: one error line naming the flag
    torch.manual_seed(0)
    cyclegan = tmp_path / "G.pth"
    torch.save(build_generator(GeneratorSpec("resnet_6blocks", ngf=4)).state_dict(), cyclegan)
    for flags in (["--num-styles", "2"], ["--seed", "3"], ["--style-image", str(image)]):
        assert translate_cli(cyclegan, image, tmp_path / "c", *flags) == 2
        line = one_error_line()
        assert flags[0] in line and "MUNIT" in line
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_python_api(munit_run):
    model = gan_style.load(munit_run, device="cpu")
    assert model.inputs() == ("style", "seed", "style_number") and model.directions == ("AtoB", "BtoA")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    content, style = model.encode(x, domain="A")
    assert content.shape == (2, 16, 8, 8) and style.shape == (2, 8, 1, 1)
    G_A, G_B = model.networks["G_A"], model.networks["G_B"]
    with torch.no_grad():
        torch.testing.assert_close(model.decode(content, style, domain="A"), G_A.decode(content, style))  # eq. 1's reconstruction
        codes = torch.randn(2, 8, 1, 1)
        translated = G_B.decode(content, codes)
        torch.testing.assert_close(model.translate(x, style=codes), translated)  # one code per image
        torch.testing.assert_close(model.decode(content, codes.flatten(1)), translated)  # (B, style_dim) works too
        torch.testing.assert_close(model.translate(x, style=codes[:1]), G_B.decode(content, codes[:1].expand(2, -1, -1, -1)))
        # style images (example-guided): the style encoder of the target domain
        examples = torch.rand(2, 3, 48, 48) * 2 - 1
        torch.testing.assert_close(model.translate(x, style=examples), G_B.decode(content, G_B.enc_style(examples)))
        torch.testing.assert_close(model.translate(x, direction="BtoA", style=examples), G_A.decode(G_B.enc_content(x), G_A.enc_style(examples)))
        # seeds: code style_number of the seed's stream, the same for every image; default seed 0
        torch.testing.assert_close(model.translate(x, seed=5, style_number=2), G_B.decode(content, random_style(8, 5, 2).expand(2, -1, -1, -1)))
        torch.testing.assert_close(model.translate(x), model.translate(x, seed=0, style_number=0))
        assert not torch.equal(model.translate(x, seed=1), model.translate(x, seed=2))
        assert torch.equal(model.random_styles(3, seed=5), random_styles(3, 8, seed=5))
    image = model.translate(photo((10, 200, 10)), style=photo((200, 10, 10), size=(20, 20)))
    assert isinstance(image, Image.Image) and image.size == (40, 32)
    with pytest.raises(ValueError, match="domain must be"):
        model.encode(x, domain="C")
    function, _ = model.bind(style=torch.randn(3, 8, 1, 1))
    with pytest.raises(ValueError, match="3 styles for 2 images"):
        function(x)
    with pytest.raises(ValueError, match="3 styles for 2 images"):
        model.decode(content, torch.randn(3, 8, 1, 1))
    with pytest.raises(ValueError, match="at least 16"):
        model.translate(x, style=torch.rand(1, 3, 8, 8))


def test_config_overrides_from_specs_rebuild_the_reference_networks():
    spec = MUNITGeneratorSpec(dim=8, mlp_dim=32, n_res=3, activ="lrelu")
    overrides = config_overrides_from_specs({"G_A": spec, "G_B": spec})
    assert overrides == {"gen_dim": 8, "mlp_dim": 32, "style_dim": 8, "n_downsample": 2, "n_res": 3, "activ": "lrelu", "pad_type": "reflect",
                         "data": {"grayscale_A": False, "grayscale_B": False}}
    config = config_from_overrides(MUNIT, "paper", overrides)
    built = MUNIT(config).build_networks()
    built["G_A"].load_state_dict(MUNITGenerator(spec).state_dict())  # the same layout, strictly
    with pytest.raises(ValueError, match="differ in dim"):
        config_overrides_from_specs({"G_A": spec, "G_B": MUNITGeneratorSpec()})


@torch.no_grad()
def test_the_translator_runs_the_reference_files_as_test_py():
    """The reference's gen file, imported, in this method's translator: a -> b with a given style
    equals the reference's own a -> b (test.py's decode(content, s_rand))."""
    from gan_style.engine.checkpoint import read_weights
    from gan_style.hub.munit import import_munit_checkpoint

    munit = GOLDEN / "munit"
    imported = import_munit_checkpoint(require_shared(munit / "gen_00000001.pt"), munit / "dis_00000001.pt")
    cases = read_weights(munit / "cases.pt")
    overrides = config_overrides_from_specs(imported["specs"])
    assert overrides["gen_dim"] == 8 and overrides["dis_dim"] == 8 and overrides["gan_mode"] == "lsgan"
    method = MUNIT(config_from_overrides(MUNIT, "paper", overrides))
    translate = method.translator(imported, "AtoB").bind(style=cases["s_rand"])
    out, ref = translate(cases["x_64"]), cases["gen_b.decode_content_srand"]
    assert (out - ref).abs().max().item() <= 1e-4 * min(1.0, ref.abs().max().item())
    # the same through gan_style.load of the gen file
    model = gan_style.load(munit / "gen_00000001.pt", device="cpu")
    assert model.method == "munit"
    out = model.translate(cases["x_64"], style=cases["s_rand"])
    assert (out - ref).abs().max().item() <= 1e-4 * min(1.0, ref.abs().max().item())
