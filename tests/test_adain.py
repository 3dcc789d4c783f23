"""AdaIN (Huang and Belongie, ICCV 2017): the layer, the test-time controls, the reference weight
layouts, the content/style dataset and decoder training through the generic trainer.

The weight files are written here in the layouts of naoto0804/pytorch-AdaIN's ``net.py`` from
seeded random weights. The layouts are spelled out below from that file (layer index -> kind),
independently of ``gan_style``'s own builders, and loaded through the same loaders a user calls.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import DATA, REPO, require_shared
from gan_style.config import load_yaml
from gan_style.data.content_style import ContentStyleDataset
from gan_style.engine.contract import StepContext, config_from_overrides
from gan_style.losses.perceptual import channel_mean_std
from gan_style.methods import get_method
from gan_style.methods.nst.adain import (
    AdaINStylizer,
    AdaINTraining,
    adaptive_instance_norm,
    load_adain_decoder,
    masked_adaptive_instance_norm,
    match_colour,
)
from gan_style.methods.nst.stylize import main as stylize_main
from gan_style.nn.vgg import ADAIN_VGG_FILE, WeightsNotFoundError, load_adain_encoder

NST = DATA / "nst"

# net.py's `vgg`: "c i o k" = Conv2d(i, o, k), "p" = ReflectionPad2d(1), "r" = ReLU,
# "m" = MaxPool2d(2, 2, ceil_mode=True). 53 layers; relu4_1 is index 30.
REFERENCE_VGG = (
    "c 3 3 1|p|c 3 64 3|r|p|c 64 64 3|r|m|p|c 64 128 3|r|p|c 128 128 3|r|m|"
    "p|c 128 256 3|r|p|c 256 256 3|r|p|c 256 256 3|r|p|c 256 256 3|r|m|"
    "p|c 256 512 3|r|p|c 512 512 3|r|p|c 512 512 3|r|p|c 512 512 3|r|m|"
    "p|c 512 512 3|r|p|c 512 512 3|r|p|c 512 512 3|r|p|c 512 512 3|r"
)
# net.py's `decoder`: "u" = UpsamplingNearest2d(scale_factor=2).
REFERENCE_DECODER = (
    "p|c 512 256 3|r|u|p|c 256 256 3|r|p|c 256 256 3|r|p|c 256 256 3|r|p|c 256 128 3|r|u|"
    "p|c 128 128 3|r|p|c 128 64 3|r|u|p|c 64 64 3|r|p|c 64 3 3"
)


def reference_sequential(spec: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for item in spec.split("|"):
        kind, *numbers = item.split()
        if kind == "c":
            i, o, k = map(int, numbers)
            conv = nn.Conv2d(i, o, (k, k))
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.normal_(conv.bias, std=0.05)
            layers.append(conv)
        else:
            layers.append({"p": lambda: nn.ReflectionPad2d((1, 1, 1, 1)), "r": nn.ReLU, "m": lambda: nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True), "u": lambda: nn.Upsample(scale_factor=2, mode="nearest")}[kind]())
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adain")
    vgg, decoder = reference_sequential(REFERENCE_VGG, 0), reference_sequential(REFERENCE_DECODER, 1)
    assert len(vgg) == 53 and len(decoder) == 29
    torch.save(vgg.state_dict(), folder / ADAIN_VGG_FILE)
    torch.save(decoder.state_dict(), folder / "decoder.pth")
    return folder, vgg, decoder


@pytest.fixture(scope="module")
def stylizer(weights):
    folder = weights[0]
    return AdaINStylizer(load_adain_encoder(folder / ADAIN_VGG_FILE), load_adain_decoder(folder / "decoder.pth")).eval()


# -- the AdaIN layer ---------------------------------------------------------------------------


def test_adain_gives_the_style_mean_and_std_exactly():
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(2, 16, 9, 7, generator=generator) * 3 + 1
    style = torch.randn(2, 16, 5, 11, generator=generator) * torch.rand(1, 16, 1, 1, generator=generator) * 4 - 2
    out = adaptive_instance_norm(content, style, eps=0.0)
    out_mean, out_std = channel_mean_std(out, eps=0.0)
    style_mean, style_std = channel_mean_std(style, eps=0.0)
    torch.testing.assert_close(out_mean, style_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_std, style_std, rtol=1e-5, atol=1e-6)
    # The reference's eps (1e-5, added to the variances) moves each std by about eps / (2 var).
    out_ref = adaptive_instance_norm(content, style)
    torch.testing.assert_close(channel_mean_std(out_ref, eps=0.0)[1], style_std, rtol=1e-5 / style_std.min().item() ** 2, atol=1e-6)
    # One style for a batch of contents.
    assert adaptive_instance_norm(content, style[:1]).shape == content.shape


def test_masked_adain_renormalises_each_region():
    generator = torch.Generator().manual_seed(1)
    content = torch.randn(1, 8, 6, 6, generator=generator)
    styles = [torch.randn(1, 8, 4, 4, generator=generator) * 2 + 3, torch.randn(1, 8, 5, 5, generator=generator) - 1]
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[:, 3:] = 1
    out = masked_adaptive_instance_norm(content, styles, labels, eps=0.0)
    for index, style in enumerate(styles):
        region = out[:, :, labels == index].unsqueeze(-1)
        torch.testing.assert_close(channel_mean_std(region, 0.0)[0], channel_mean_std(style, 0.0)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(channel_mean_std(region, 0.0)[1], channel_mean_std(style, 0.0)[1], rtol=1e-5, atol=1e-5)
    whole = masked_adaptive_instance_norm(content, styles, torch.zeros(6, 6, dtype=torch.long))
    torch.testing.assert_close(whole, adaptive_instance_norm(content, styles[0]))


def test_match_colour():
    generator = torch.Generator().manual_seed(2)
    source = torch.rand(1, 3, 20, 20, generator=generator) * 0.4 + 0.1
    mix = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    target = (torch.einsum("ij,bjhw->bihw", mix, torch.rand(1, 3, 16, 16, generator=generator)) * 0.5 + 0.2).clamp(0, 1)
    out = match_colour(source, target)

    def stats(x):
        p = x.flatten(2)[0].double()
        return p.mean(1), torch.cov(p)

    torch.testing.assert_close(stats(out)[0], stats(target)[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(stats(out)[1], stats(target)[1], rtol=1e-2, atol=1e-4)


# -- reference weights and the stylising network -----------------------------------------------


def test_reference_layouts_load_and_compute_as_net_py(weights):
    folder, vgg, decoder = weights
    encoder = load_adain_encoder(folder / ADAIN_VGG_FILE)
    loaded_decoder = load_adain_decoder(folder / "decoder.pth")
    assert not any(p.requires_grad for p in encoder.parameters())
    image = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(3))
    # net.py's Net: enc_1 = [:4], enc_2 = [4:11], enc_3 = [11:18], enc_4 = [18:31].
    expected, x = [], image
    with torch.no_grad():
        for start, end in ((0, 4), (4, 11), (11, 18), (18, 31)):
            x = vgg[start:end](x)
            expected.append(x)
        features = encoder(image)
        for ours, theirs in zip(features, expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded_decoder(features[-1]), decoder(expected[-1]), rtol=1e-4, atol=1e-5)
    # [-1, 1] inputs, once the encoder is told so.
    signed = load_adain_encoder(folder / ADAIN_VGG_FILE, input_range=(-1.0, 1.0))
    torch.testing.assert_close(signed.encode(image * 2 - 1), expected[-1], rtol=1e-4, atol=1e-5)


def test_alpha_zero_decodes_the_content_features(stylizer):
    generator = torch.Generator().manual_seed(4)
    content, style = torch.rand(1, 3, 48, 40, generator=generator), torch.rand(1, 3, 32, 56, generator=generator)
    with torch.no_grad():
        out = stylizer(content, [style], alpha=0.0)
        expected = stylizer.decoder(stylizer.encoder.encode(content))
        assert out.shape == content.shape
        assert torch.equal(out, expected)
        half = stylizer(content, [style], alpha=0.5)
        target = 0.5 * adaptive_instance_norm(stylizer.encoder.encode(content), stylizer.encoder.encode(style)) + 0.5 * stylizer.encoder.encode(content)
        torch.testing.assert_close(half, stylizer.decoder(target), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        stylizer(content, [style], alpha=1.5)


def test_style_interpolation_and_odd_sizes(stylizer):
    generator = torch.Generator().manual_seed(5)
    content = torch.rand(1, 3, 37, 45, generator=generator)  # not multiples of 8: cropped back
    a, b = torch.rand(1, 3, 32, 32, generator=generator), torch.rand(1, 3, 24, 40, generator=generator)
    with torch.no_grad():
        only_a = stylizer(content, [a])
        assert only_a.shape == content.shape
        torch.testing.assert_close(stylizer(content, [a, b], style_weights=[2.0, 0.0]), only_a)
        mixed = stylizer(content, [a, b], style_weights=[1.0, 3.0])
        fc = stylizer.encoder.encode(content)
        target = 0.25 * adaptive_instance_norm(fc, stylizer.encoder.encode(a)) + 0.75 * adaptive_instance_norm(fc, stylizer.encoder.encode(b))
        torch.testing.assert_close(mixed, stylizer.decoder(target)[..., :37, :45], rtol=1e-5, atol=1e-5)
        labels = torch.zeros(37, 45, dtype=torch.long)
        assert stylizer(content, [a, b], labels=labels).shape == content.shape


def test_missing_adain_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_adain_encoder(None)
    message = str(info.value)
    assert "vgg_normalised.pth" in message and str(tmp_path / "models" / "vgg_normalised.pth") in message
    assert "naoto0804/pytorch-AdaIN/releases" in message
    with pytest.raises(WeightsNotFoundError, match="decoder.pth"):
        load_adain_decoder(None)


def test_cli_adain_options(weights, tmp_path, capsys):
    require_shared(NST)
    folder = weights[0]
    common = ["--method", "adain", "--content", str(NST / "content" / "golden_gate.jpg"), "--vgg-weights", str(folder / ADAIN_VGG_FILE), "--decoder", str(folder / "decoder.pth"), "--size", "64", "--device", "cpu"]
    styles = [str(NST / "style" / "mondrian.jpg"), str(NST / "style" / "picabia_udnie.jpg")]
    runs = {
        "plain.png": ["--style", styles[0], "--alpha", "0.6"],
        "colour.png": ["--style", styles[0], "--original-colors", "--style-size", "48"],
        "mix.png": ["--style", *styles, "--style-weights", "1", "2"],
        "mask.png": ["--style", *styles, "--mask", str(NST / "content" / "amber.jpg")],
    }
    from PIL import Image

    for name, extra in runs.items():
        assert stylize_main([*common, *extra, "--output", str(tmp_path / name)]) == 0, capsys.readouterr().err
        with Image.open(tmp_path / name) as image:
            assert image.size == (64, 48)
    assert stylize_main([*common, "--style", styles[0], "--alpha", "2", "--output", str(tmp_path / "x.png")]) == 2
    assert "alpha" in capsys.readouterr().err


# -- training ----------------------------------------------------------------------------------


def test_content_style_dataset(tmp_path):
    require_shared(NST)
    dataset = ContentStyleDataset(NST / "content", NST / "style", load_size=96, crop_size=64, seed=7)
    assert len(dataset) == 9
    item = dataset[3]
    assert item["content"].shape == (3, 64, 64) and item["style"].shape == (3, 64, 64)
    assert -1 <= item["content"].min() and item["content"].max() <= 1
    again = ContentStyleDataset(NST / "content", NST / "style", load_size=96, crop_size=64, seed=7)[3]
    assert torch.equal(item["content"], again["content"]) and item["style_path"] == again["style_path"]
    dataset.set_epoch(1)
    other = [dataset[i]["style_path"] for i in range(9)]
    dataset.set_epoch(0)
    assert other != [dataset[i]["style_path"] for i in range(9)]
    # A corrupt file is skipped with a warning.
    bad = tmp_path / "content"
    bad.mkdir()
    (bad / "a_broken.jpg").write_bytes(b"not a jpeg")
    (bad / "b_good.jpg").write_bytes((NST / "content" / "amber.jpg").read_bytes())
    broken = ContentStyleDataset(bad, NST / "style", load_size=64, crop_size=32)
    with pytest.warns(UserWarning, match="a_broken.jpg"):
        assert broken[0]["content_path"].endswith("b_good.jpg")


def test_config_presets_and_recipe():
    assert get_method("adain") is AdaINTraining
    config = config_from_overrides(AdaINTraining, None, {})  # the default preset: paper
    assert (config.lr, config.content_weight, config.style_weight) == (1e-4, 1.0, 10.0)
    assert (config.data.load_size, config.data.crop_size, config.train.batch_size) == (512, 256, 8)
    spec = AdaINTraining(config).optimizers()
    assert [s.networks for s in spec] == [("decoder",)]  # the encoder is in no optimiser
    recipe = load_yaml(REPO / "train" / "adain.yaml")
    assert recipe["method"] == "adain"
    overrides = {k: v for k, v in recipe.items() if k not in ("method", "preset")}
    config = config_from_overrides(AdaINTraining, recipe.get("preset"), overrides)
    assert config.train.batch_size == 8 and config.data.content_dir and config.data.style_dir


def test_phase_step_by_hand(weights):
    """The decoder phase with a hand-made optimiser step: the loss terms of Eqs. 12-13."""
    folder = weights[0]
    config = config_from_overrides(AdaINTraining, "demo", {"vgg_weights": str(folder / ADAIN_VGG_FILE)})
    method = AdaINTraining(config)
    nets = method.build_networks()
    (phase,) = method.phases()
    generator = torch.Generator().manual_seed(0)
    batch = method.synthetic_batch(32, 2, generator)
    out = phase.step(StepContext(nets, {}, 0, 1), batch)
    assert set(out.losses) == {"content", "style"}
    # Eq. 12 by hand.
    with torch.no_grad():
        t = adaptive_instance_norm(nets["encoder"].encode((batch["content"] + 1) / 2), nets["encoder"].encode((batch["style"] + 1) / 2))
        expected = F.mse_loss(nets["encoder"].encode(nets["decoder"](t)), t)
    torch.testing.assert_close(out.losses["content"].detach(), expected * config.content_weight)
    optimizer = torch.optim.Adam(nets["decoder"].parameters(), lr=config.lr)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in nets["encoder"].parameters())
    optimizer.step()


def test_decoder_training_with_the_trainer(weights, tmp_path):
    require_shared(NST)
    from gan_style.engine.trainer import Trainer

    folder = weights[0]
    overrides = {"data": {"root": str(NST), "load_size": 64, "crop_size": 32}, "vgg_weights": str(folder / ADAIN_VGG_FILE), "train": {"max_steps": 3, "batch_size": 2, "log_every": 1}}
    config = config_from_overrides(AdaINTraining, "demo", overrides)
    trainer = Trainer(AdaINTraining(config), tmp_path / "run", show_progress=False)
    encoder_before = {k: v.clone() for k, v in trainer.unwrapped("encoder").state_dict().items()}
    decoder_before = {k: v.clone() for k, v in trainer.unwrapped("decoder").state_dict().items()}
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorboard's own deprecation warnings
        trainer.fit(on_step=lambda step, logs: losses.append({k: float(v) for k, v in logs.items()}))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in losses)
    assert {"loss/decoder/content", "loss/decoder/style"} <= set(losses[0])
    for key, value in trainer.unwrapped("encoder").state_dict().items():
        assert torch.equal(value, encoder_before[key]), f"the encoder changed: {key}"
    assert any(not torch.equal(v, decoder_before[k]) for k, v in trainer.unwrapped("decoder").state_dict().items())
    # The trained decoder loads for stylisation from the run folder.
    decoder = load_adain_decoder(tmp_path / "run")
    for key, value in trainer.unwrapped("decoder").state_dict().items():
        torch.testing.assert_close(decoder.state_dict()[key], value.cpu())
    assert (tmp_path / "run" / "samples").is_dir()


def test_train_recipe_then_stylize_from_the_run(weights, tmp_path, capsys):
    """`gan-style train train/adain.yaml` then `gan-style stylize --method adain --decoder RUN`."""
    require_shared(NST)
    from gan_style.cli import main as cli_main

    folder = weights[0]
    run = tmp_path / "run"
    settings = [f"data.content_dir={NST / 'content'}", f"data.style_dir={NST / 'style'}", "data.num_workers=0", f"vgg_weights={folder / ADAIN_VGG_FILE}", "train.max_steps=2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = cli_main(["train", str(REPO / "train" / "adain.yaml"), "--preset", "demo", "--run-dir", str(run), *[x for s in settings for x in ("--set", s)]])
    assert status == 0, capsys.readouterr().err
    output = tmp_path / "stylized.png"
    # No --vgg-weights: the encoder comes from the run's checkpoint.
    args = ["stylize", "--method", "adain", "--decoder", str(run), "--content", str(NST / "content" / "chicago.jpg"), "--style", str(NST / "style" / "sketch.png"), "--size", "48", "--output", str(output)]
    assert cli_main(args) == 0, capsys.readouterr().err
    assert output.is_file()
    # `gan-style translate` runs AdaIN's translator too; it needs the style image it declares.
    translate = ["translate", "--checkpoint", str(run), "--input", str(NST / "content" / "chicago.jpg"), "--output", str(tmp_path / "t")]
    assert cli_main(translate) == 2
    assert "--with style=" in capsys.readouterr().err
    assert cli_main([*translate, "--with", f"style={NST / 'style' / 'sketch.png'}", "--with", "alpha=0.5"]) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "t" / "chicago.png").size == Image.open(NST / "content" / "chicago.jpg").size
