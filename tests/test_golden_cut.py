"""CUT / FastCUT / SinCUT networks and losses against the reference's golden outputs
(shared/golden/cut, see its README), loaded the way a user loads them: through
``gan_style.hub.import_reference_checkpoint``. Also the full-size parameter counts, the importers'
layout detection, and the StyleGAN2 layer paths the goldens do not reach (styles, batches).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import SHARED
from conftest import assert_golden_close as assert_close
from gan_style.hub import cut_family, import_reference_checkpoint, import_reference_state_dict, pix2pix_family
from gan_style.hub.errors import LayoutMismatch
from gan_style.losses.patchnce import multilayer_patch_nce_loss, patch_nce_loss
from gan_style.nn.discriminators import DiscriminatorSpec, NLayerDiscriminator, build_discriminator
from gan_style.nn.generators import GeneratorSpec, ResnetGenerator, build_generator
from gan_style.nn.layers import count_parameters
from gan_style.nn.patch_sampler import PatchSampleMLP, feature_channels
from gan_style.nn.sincut_networks import (
    SinCUTDiscriminator,
    SinCUTDiscriminatorSpec,
    SinCUTGenerator,
    SinCUTGeneratorSpec,
)
from gan_style.nn.stylegan2 import (
    ConvLayer,
    FusedLeakyReLU,
    ModulatedConv2d,
    NoiseInjection,
    ResBlock,
    StyledConv,
    fused_leaky_relu,
    upfirdn2d,
)

GOLDEN = SHARED / "golden" / "cut"
CUT_DIR, SINCUT_DIR = GOLDEN / "CUT_ngf16_ndf16", GOLDEN / "SinCUT_ngf2_ndf1"
CUT_NCE_LAYERS = [0, 4, 8, 12, 16]
SINCUT_NCE_LAYERS = [0, 2, 4]


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    if not (GOLDEN / "cases.pt").is_file():
        pytest.skip(f"{GOLDEN} is absent: the CUT golden tests need the shared data folder (../shared beside the repo, or GAN_STYLE_SHARED)")
    return torch.load(GOLDEN / "cases.pt", weights_only=True)




# -- CUT / FastCUT ----------------------------------------------------------------------------------
@torch.no_grad()
def test_cut_generator_outputs_and_nce_features(cases):
    G = import_reference_checkpoint(CUT_DIR / "latest_net_G.pth")
    assert isinstance(G, ResnetGenerator)
    assert_close(G(cases["x_64"]), cases["G_out_64"], "G_out_64")
    assert_close(G(cases["x_72x96"]), cases["G_out_72x96"], "G_out_72x96")
    for k, feature in enumerate(G.encode(cases["x_64"], CUT_NCE_LAYERS)):
        assert_close(feature, cases[f"feat_x_{k}"], f"feat_x_{k}")


@torch.no_grad()
def test_cut_discriminator(cases):
    D = import_reference_checkpoint(CUT_DIR / "latest_net_D.pth")
    assert isinstance(D, NLayerDiscriminator)
    assert_close(D(cases["x_64"]), cases["D_out_x_64"], "D_out_x_64")
    assert_close(D(cases["G_out_64"]), cases["D_out_Gx_64"], "D_out_Gx_64")
    assert_close(D(cases["x_72x96"]), cases["D_out_x_72x96"], "D_out_x_72x96")


@torch.no_grad()
def test_cut_patch_sampler_and_patchnce_end_to_end(cases):
    """x -> G features -> F (reference patch ids) -> PatchNCE, against every intermediate golden."""
    G = import_reference_checkpoint(CUT_DIR / "latest_net_G.pth")
    netF = import_reference_checkpoint(CUT_DIR / "latest_net_F.pth")
    assert isinstance(netF, PatchSampleMLP) and netF.in_channels == (3, 32, 64, 64, 64)
    patch_ids = [cases[f"patch_ids_{k}"] for k in range(len(CUT_NCE_LAYERS))]

    keys, used_ids = netF(G.encode(cases["x_64"], CUT_NCE_LAYERS), patch_ids=patch_ids)
    queries, _ = netF(G.encode(G(cases["x_64"]), CUT_NCE_LAYERS), patch_ids=used_ids)
    for k, (query, key) in enumerate(zip(queries, keys)):
        assert query.shape == (1, 16, 256)
        assert_close(key, cases[f"F_feat_x_{k}"], f"F_feat_x_{k}")
        assert_close(query, cases[f"F_feat_Gx_{k}"], f"F_feat_Gx_{k}")
        loss = patch_nce_loss(query, key, temperature=0.07)
        assert_close(loss, cases[f"nce_loss_{k}"], f"nce_loss_{k}")
        assert_close(loss.mean(), cases[f"nce_loss_mean_{k}"], f"nce_loss_mean_{k}")
    assert_close(multilayer_patch_nce_loss(queries, keys, 0.07), cases["nce_loss_total"], "nce_loss_total")


def test_patchnce_on_reference_projections(cases):
    """The loss alone, fed the reference's own projections (no error carried in from G and F)."""
    for k in range(len(CUT_NCE_LAYERS)):
        query, key = cases[f"F_feat_Gx_{k}"][None], cases[f"F_feat_x_{k}"][None]
        loss = patch_nce_loss(query, key, 0.07)
        ref = cases[f"nce_loss_{k}"]
        assert (loss.flatten() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


# -- SinCUT -----------------------------------------------------------------------------------------
@torch.no_grad()
def test_sincut_generator(cases):
    G = import_reference_checkpoint(SINCUT_DIR / "latest_net_G.pth")
    assert isinstance(G, SinCUTGenerator)
    assert G.spec == SinCUTGeneratorSpec.from_reference_options(ngf=2)
    assert_close(G(cases["x_64"]), cases["sincut.G_out_64"], "sincut.G_out_64")
    assert_close(G(cases["x_48x80"]), cases["sincut.G_out_48x80"], "sincut.G_out_48x80")
    features = G.encode(cases["x_64"], SINCUT_NCE_LAYERS)
    for k, feature in enumerate(features):
        assert_close(feature, cases[f"sincut.feat_x_{k}"], f"sincut.feat_x_{k}")
    assert G.feature_channels(SINCUT_NCE_LAYERS) == [f.shape[1] for f in features]


@torch.no_grad()
def test_sincut_generator_noise(cases):
    G = import_reference_checkpoint(SINCUT_DIR / "latest_net_G.pth")
    (styled,) = G.decoder.styled_convs
    styled.noise.weight.copy_(cases["sincut.noise_weight_override"])
    assert_close(G(cases["x_64"], noise=[cases["sincut.noise_0"]]), cases["sincut.G_out_64_noisy"], "sincut.G_out_64_noisy")
    # drawn noise: fresh at every call, reproducible through an explicit generator, no hidden state
    x = cases["x_64"]
    first = G(x, generator=torch.Generator().manual_seed(3))
    again = G(x, generator=torch.Generator().manual_seed(3))
    other = G(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.allclose(first, other)


@torch.no_grad()
def test_sincut_discriminator(cases):
    D = import_reference_checkpoint(SINCUT_DIR / "latest_net_D.pth")
    assert isinstance(D, SinCUTDiscriminator)
    assert D.spec == SinCUTDiscriminatorSpec.from_reference_options(ndf=1)
    assert_close(D(cases["x_64"]), cases["sincut.D_out_x_64"], "sincut.D_out_x_64")
    assert_close(D(cases["sincut.G_out_64"]), cases["sincut.D_out_Gx_64"], "sincut.D_out_Gx_64")
    with pytest.raises(ValueError, match="64x64"):
        D(cases["x_72x96"])


# -- importers: each file goes to its own layout ----------------------------------------------------
def test_importers_tell_the_layouts_apart(cases):
    cut_files = {
        CUT_DIR / "latest_net_F.pth": PatchSampleMLP,
        SINCUT_DIR / "latest_net_G.pth": SinCUTGenerator,
        SINCUT_DIR / "latest_net_D.pth": SinCUTDiscriminator,
    }
    for path, kind in cut_files.items():
        state = pix2pix_family.prepare_state(torch.load(path, weights_only=True))
        for importer in pix2pix_family.IMPORTERS:
            with pytest.raises(LayoutMismatch):
                importer(state)
        accepted = []
        for importer in cut_family.IMPORTERS:
            try:
                accepted.append(type(importer(state)[0]))
            except LayoutMismatch:
                pass
        assert accepted == [kind], path
    pix2pix_files = sorted((GOLDEN.parent / "cyclegan").glob("*/*.pth")) + [CUT_DIR / "latest_net_G.pth", CUT_DIR / "latest_net_D.pth"]
    assert len(pix2pix_files) == 9
    for path in pix2pix_files:
        state = pix2pix_family.prepare_state(torch.load(path, weights_only=True))
        for importer in cut_family.IMPORTERS:
            with pytest.raises(LayoutMismatch):
                importer(state)
    # a DataParallel prefix is stripped for these files too
    state = torch.load(CUT_DIR / "latest_net_F.pth", weights_only=True)
    net, spec = import_reference_state_dict({f"module.{k}": v for k, v in state.items()})
    assert isinstance(net, PatchSampleMLP) and spec.out_channels == 256


# -- full-size parameter counts (no golden files needed) --------------------------------------------
def test_cut_full_size_parameter_counts():
    with torch.device("meta"):
        G = build_generator(GeneratorSpec(ngf=64, antialias=True, antialias_up=True), init_type=None)
        D = build_discriminator(DiscriminatorSpec(ndf=64, antialias=True), init_type=None)
        netF = PatchSampleMLP(feature_channels(G, CUT_NCE_LAYERS))
    assert count_parameters(G) == 11_378_179
    assert count_parameters(D) == 2_764_737
    assert netF.in_channels == (3, 128, 256, 256, 256)
    assert count_parameters(netF) == 560_384


def test_sincut_full_size_parameter_counts():
    with torch.device("meta"):
        G = SinCUTGenerator(SinCUTGeneratorSpec.from_reference_options(ngf=10))
        D = SinCUTDiscriminator(SinCUTDiscriminatorSpec.from_reference_options(ndf=8))
        netF = PatchSampleMLP(feature_channels(G, SINCUT_NCE_LAYERS))
    assert count_parameters(G) == 3_068_404
    assert count_parameters(D) == 5_885_473
    assert count_parameters(netF) == 280_832
    assert G.spec == SinCUTGeneratorSpec()  # the defaults are SinCUT's
    assert D.spec == SinCUTDiscriminatorSpec()


def test_sincut_feature_channels_match_a_dry_run():
    G = SinCUTGenerator(SinCUTGeneratorSpec.from_reference_options(ngf=2))
    with torch.no_grad():
        measured = [f.shape[1] for f in G.encode(torch.zeros(1, 3, 16, 16), list(range(6)))]
    assert G.feature_channels(range(6)) == measured


# -- StyleGAN2 layer paths the goldens do not reach -------------------------------------------------
def _upfirdn2d_by_definition(x: torch.Tensor, kernel: torch.Tensor, up: int, down: int, pad: tuple[int, int]) -> torch.Tensor:
    batch, channels, height, width = x.shape
    upsampled = x.new_zeros(batch, channels, height * up, width * up)
    upsampled[:, :, ::up, ::up] = x
    padded = F.pad(upsampled, (pad[0], pad[1], pad[0], pad[1]))
    kh, kw = kernel.shape
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    out = x.new_zeros(batch, channels, out_h, out_w)
    for i in range(kh):  # true convolution: out[y] = sum_i in[y + i] * k[kh - 1 - i]
        for j in range(kw):
            out += padded[:, :, i : i + out_h, j : j + out_w] * kernel[kh - 1 - i, kw - 1 - j]
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(
    "up, down, pad", [(1, 1, (1, 1)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (-1, 2)), (1, 2, (2, 2)), (1, 1, (0, 2)), (1, 2, (3, -1))]
)
def test_upfirdn2d_matches_its_definition(up, down, pad):
    # symmetric pads are the filter's own, asymmetric excesses and crops are padded apart: all
    # must be the definition's values and gradients
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    kernel = torch.rand(4, 3, generator=gen, dtype=torch.float64)  # asymmetric: checks the flip
    expected = _upfirdn2d_by_definition(x, kernel, up, down, pad)
    out = upfirdn2d(x, kernel, up, down, pad)
    torch.testing.assert_close(out, expected)
    dy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(out, x, dy)[0], torch.autograd.grad(expected, x, dy)[0])


@pytest.mark.parametrize("mode", ["plain", "upsample", "downsample"])
def test_modulated_conv_with_styles_matches_a_per_sample_loop(mode):
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 5, 3, style_dim=6, upsample=mode == "upsample", downsample=mode == "downsample").double()
    with torch.no_grad():
        conv.modulation.bias.normal_()  # away from the all-ones init
    x, style = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    batched = conv(x, style)
    for b in range(3):
        # eq. 1-3 for one sample, written out
        s = F.linear(style[b : b + 1], conv.modulation.weight * conv.modulation.scale, conv.modulation.bias)
        w = conv.scale * conv.weight[0] * s.view(1, 4, 1, 1)
        w = w / torch.sqrt(w.pow(2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if mode == "upsample":
            single = conv.blur(F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2))
        elif mode == "downsample":
            single = F.conv2d(conv.blur(x[b : b + 1]), w, stride=2)
        else:
            single = F.conv2d(x[b : b + 1], w, padding=1)
        torch.testing.assert_close(batched[b : b + 1], single)
    expected_size = {"plain": 8, "upsample": 16, "downsample": 4}[mode]
    assert batched.shape == (3, 5, expected_size, expected_size)


def test_unmodulated_conv_treats_every_sample_alike():
    torch.manual_seed(0)
    conv = ModulatedConv2d(4, 5, 3, style_dim=None, upsample=True)
    x = torch.randn(3, 4, 6, 6)
    together = conv(x)
    apart = torch.cat([conv(x[b : b + 1]) for b in range(3)])
    torch.testing.assert_close(together, apart)
    with pytest.raises(ValueError):
        conv(x, torch.randn(3, 6))


def test_noise_injection_and_bias_layouts():
    noise_layer = NoiseInjection()
    with torch.no_grad():
        noise_layer.weight.fill_(0.5)
    x = torch.zeros(2, 3, 4, 5)
    given = torch.randn(2, 1, 4, 5)
    torch.testing.assert_close(noise_layer(x, given), 0.5 * given.expand(2, 3, 4, 5))
    a = noise_layer(x, generator=torch.Generator().manual_seed(1))
    b = noise_layer(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a[:, 0], a[:, 2])  # one noise image for all channels

    vector, nchw = FusedLeakyReLU(3, bias_shape="vector"), FusedLeakyReLU(3, bias_shape="nchw")
    assert vector.bias.shape == (3,) and nchw.bias.shape == (1, 3, 1, 1)
    with torch.no_grad():
        vector.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        nchw.bias.copy_(vector.bias.view(1, 3, 1, 1))
    y = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(vector(y), nchw(y))
    expected = F.leaky_relu(y + vector.bias.view(1, 3, 1, 1), 0.2) * math.sqrt(2)
    torch.testing.assert_close(vector(y), expected)
    torch.testing.assert_close(vector(y[:, :, 0, 0]), expected[:, :, 0, 0])  # also on (B, C) inputs


@pytest.mark.parametrize("bias_shape", [(3,), (1, 3, 1, 1), None])
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_leaky_relu_is_the_composition_with_its_first_and_second_derivatives(bias_shape, inplace):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = None if bias_shape is None else torch.randn(bias_shape, dtype=torch.float64, generator=generator, requires_grad=True)
    inputs = (x,) if bias is None else (x, bias)

    def activation(x, bias=None):  # x * 1: a temporary the in-place form may overwrite
        return fused_leaky_relu(x * 1, bias, inplace=inplace)

    shifted = x if bias is None else x + bias.view(1, 3, 1, 1)
    torch.testing.assert_close(activation(*inputs), F.leaky_relu(shifted, 0.2) * math.sqrt(2))
    assert torch.autograd.gradcheck(activation, inputs)
    assert torch.autograd.gradgradcheck(activation, inputs)  # R1 differentiates the backward again


def test_in_place_activations_overwrite_the_convolutions_output_and_change_nothing():
    torch.manual_seed(0)
    layers = [ConvLayer(4, 6, 3), ConvLayer(4, 6, 3, bias=False), ResBlock(4, 6), StyledConv(4, 6, 3, style_dim=5)]
    for layer in layers:
        activations = [m for m in layer.modules() if hasattr(m, "inplace")]
        assert activations and all(m.inplace for m in activations)
    conv_layer = layers[0]
    conv_outputs = []
    conv_layer[0].register_forward_hook(lambda module, args, out: conv_outputs.append(out.data_ptr()))
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert conv_layer(x).data_ptr() == conv_outputs[0]  # no new full-size tensor for the activation

    style, noise = torch.randn(2, 5), torch.randn(2, 1, 8, 8)
    for layer in layers:
        extra = (style, noise) if isinstance(layer, StyledConv) else ()
        out = layer(x, *extra)
        grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()], allow_unused=True)
        for module in layer.modules():
            if hasattr(module, "inplace"):
                module.inplace = False
        out_copying = layer(x, *extra)
        grads_copying = torch.autograd.grad(out_copying.square().sum(), [x, *layer.parameters()], allow_unused=True)
        assert torch.equal(out, out_copying)
        for grad, grad_copying in zip(grads, grads_copying):
            assert (grad is None and grad_copying is None) or torch.equal(grad, grad_copying)
