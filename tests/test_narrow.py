"""The image-facing convolutions by a GEMM and a tap gather (gan_style.nn.narrow): the same output
and gradients as PyTorch's convolution in every pass, chosen per pass by a measurement taken once,
and only where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_style.engine.kernels import choose_kernels, set_conv_kernel
from gan_style.nn import narrow
from gan_style.nn.layers import Conv2d
from gan_style.nn.narrow import forget_narrow_choices, narrow_choices, narrow_conv2d, narrow_kernels_available, taps_backward, taps_forward

pytestmark = pytest.mark.skipif(not narrow_kernels_available(), reason="the C gathers need a C compiler (GAN_STYLE_NATIVE not 0)")

#: (batch, in, out, height, width, kernel, padding): the generators' 7x7 entry (3 -> 64) and exit
#: (64 -> 3) after their reflection pad, the PatchGAN's last 4x4 layer (-> 1) and odd ones
#: (a non-square map, padding as wide as the kernel allows, one image, a 5x5 kernel, 2 channels)
SHAPES = [(2, 3, 32, 22, 22, 7, 0), (2, 32, 3, 22, 22, 7, 0), (3, 64, 1, 9, 9, 4, 1), (1, 16, 4, 11, 14, 7, 6),
          (2, 2, 16, 13, 10, 5, 4), (3, 48, 2, 12, 9, 3, 1)]


def _inputs(n, c_in, c_out, h, w, k, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=generator).contiguous(memory_format=torch.channels_last) / (k * c_in**0.5)
    bias = torch.randn(c_out, generator=generator)
    return x, weight, bias


def _exact(x, weight, bias, padding, grad_out):
    """Output and (input, weight, bias) gradients in float64: the reference both kernels are held to."""
    leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    out = F.conv2d(*leaves, padding=padding)
    return (out, *torch.autograd.grad(out, leaves, grad_out.double()))


def _error(ours, exact):
    return ((ours.double() - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_the_taps_passes_are_the_convolutions(shape):
    n, c_in, c_out, h, w, k, padding = shape
    x, weight, bias = _inputs(n, c_in, c_out, h, w, k)
    out = taps_forward(x, weight, bias, padding)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    exact = _exact(x, weight, bias, padding, grad_out)
    ours = (out, *taps_backward(grad_out, x, weight, padding, (True, True, True)))
    for name, mine, reference in zip(("output", "input gradient", "weight gradient", "bias gradient"), ours, exact, strict=True):
        assert mine.shape == reference.shape, name
        assert _error(mine, reference) < 1e-5, name  # fp32 GEMMs: ~1e-6, as PyTorch's own
    assert ours[2].is_contiguous(memory_format=torch.channels_last)  # the weight's memory format
    # only what is asked for
    assert taps_backward(grad_out, x, weight, padding, (False, True, False))[::2] == (None, None)


def test_blocks_of_images_give_the_whole_batchs_result(monkeypatch):
    x, weight, bias = _inputs(5, 32, 3, 12, 12, 7)
    grad_out = torch.randn(5, 3, 6, 6)
    whole = (taps_forward(x, weight, bias, 0), *taps_backward(grad_out, x, weight, 0, (True, True, True)))
    monkeypatch.setattr(narrow, "TAP_BLOCK_BYTES", 2 * 12 * 12 * 7 * 7 * 3 * 4)  # two images a block: 2 + 2 + 1
    assert [block for block in narrow._image_blocks(5, 12 * 12 * 7 * 7 * 3 * 4)] == [(0, 2), (2, 2), (4, 1)]
    blocked = (taps_forward(x, weight, bias, 0), *taps_backward(grad_out, x, weight, 0, (True, True, True)))
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("verdict", ["direct", "taps"])
def test_either_choice_trains_like_pytorchs_convolution(monkeypatch, verdict):
    """Through autograd, whichever kernel the measurement picks (forced here), the layer's output
    and gradients are PyTorch's; each pass is measured once and listed."""
    forget_narrow_choices()
    monkeypatch.setattr(narrow, "MIN_MFLOP", 0)  # the test's small layers
    monkeypatch.setattr(narrow.verdicts, "verdict", lambda direct_ms, taps_ms: verdict)
    for shape in SHAPES[:2]:
        n, c_in, c_out, h, w, k, padding = shape
        x, weight, bias = _inputs(n, c_in, c_out, h, w, k)
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = narrow_conv2d(*leaves, padding)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        grads = torch.autograd.grad(out, leaves, grad_out)
        narrow_conv2d(*leaves, padding).relu_().sum().backward()  # modified in place, as the StyleGAN2 activations do
        for mine, reference in zip((out, *grads), _exact(x, weight, bias, padding, grad_out), strict=True):
            assert _error(mine, reference) < 1e-5
    listed = narrow_choices()
    assert len(listed) == 4 and all(v["kernel"] == verdict and v["direct_ms"] > 0 and v["taps_ms"] > 0 for v in listed.values())
    assert any(key.startswith("forward 2x32x22x22 -> 3, 7x7") for key in listed)
    assert any(key.startswith("backward 2x3x22x22 -> 32, 7x7, padding 0 (input, weight, bias gradients)") for key in listed)
    forget_narrow_choices()


def test_a_gradient_penalty_through_the_layer_is_differentiated_as_pytorchs(monkeypatch):
    """create_graph (R1): PyTorch's backward, whose own gradient autograd knows."""
    monkeypatch.setattr(narrow.verdicts, "verdict", lambda direct_ms, taps_ms: "taps")
    monkeypatch.setattr(narrow, "MIN_MFLOP", 0)
    x, weight, bias = _inputs(2, 32, 1, 10, 10, 4)
    results = []
    for conv in (lambda *a: narrow_conv2d(*a, 1), lambda *a: F.conv2d(*a, padding=1)):
        images, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        (grad_images,) = torch.autograd.grad(conv(images, w, bias).sum(), images, create_graph=True)
        results.append(torch.autograd.grad(grad_images.square().sum(), w)[0])
    torch.testing.assert_close(*results)
    forget_narrow_choices()


def test_it_applies_to_fp32_cpu_layers_with_a_narrow_and_a_wide_side_only(monkeypatch):
    # the generators' 7x7 exit at 128 px applies; at 16 px it is too small to time (0.5 MFLOP)
    assert narrow.narrow_conv_applies(*_inputs(1, 64, 3, 134, 134, 7)[:2], 0)
    assert not narrow.narrow_conv_applies(*_inputs(1, 64, 3, 22, 22, 7)[:2], 0)
    monkeypatch.setattr(narrow, "MIN_MFLOP", 0)
    x3, weight3, _ = _inputs(1, 3, 32, 12, 12, 7)
    x32, weight32, _ = _inputs(1, 32, 3, 12, 12, 7)
    assert narrow.narrow_conv_applies(x3, weight3, 0) and narrow.narrow_conv_applies(x32, weight32, 3)
    assert narrow.narrow_conv_applies(x3.contiguous(), weight3, 0)  # the narrow input is made channels-last (cheap)
    assert not narrow.narrow_conv_applies(x32.contiguous(), weight32, 0)  # a wide NCHW input would be copied whole
    assert not narrow.narrow_conv_applies(x32.bfloat16(), weight32.bfloat16(), 0)
    assert not narrow.narrow_conv_applies(x32, weight32, 7)  # padding as wide as the kernel
    x16, weight16, _ = _inputs(1, 16, 16, 12, 12, 7)
    assert not narrow.narrow_conv_applies(x16, weight16, 0)  # no narrow side
    assert not narrow.narrow_conv_applies(*_inputs(1, 4, 8, 12, 12, 7)[:2], 0)  # no wide side
    assert not narrow.narrow_conv_applies(*_inputs(1, 32, 3, 12, 12, 1)[:2], 0)  # 1x1: already one GEMM
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not narrow.narrow_conv_applies(x32, weight32, 0)


def test_the_trainer_measures_them_in_fp32_cpu_steps_and_layers_follow(monkeypatch):
    assert choose_kernels("cpu", torch.float32, winograd=True).narrow == "measured"
    assert "image-side convolutions by tap products" in choose_kernels("cpu", torch.float32, winograd=True).describe()
    assert choose_kernels("cpu", torch.bfloat16, winograd=True).narrow == "direct"
    ran = []
    monkeypatch.setattr(narrow, "MIN_MFLOP", 0)
    monkeypatch.setattr(narrow._NarrowConv, "apply", lambda *args: ran.append(args[1].shape) or F.conv2d(args[0], args[1], args[2], padding=args[3]))
    layer = Conv2d(32, 3, 7)
    x = torch.randn(1, 32, 12, 12).contiguous(memory_format=torch.channels_last)
    layer(x)
    assert not ran  # built outside a trainer: PyTorch's convolution
    set_conv_kernel(layer, "winograd", "measured", "measured")
    layer(x)
    assert ran == [layer.weight.shape]


@pytest.mark.parametrize("k", [3, 4, 5, 7])
def test_the_c_gathers_match_unfold_at_every_shift_width_and_tap_order(k):
    """Both gathers against PyTorch's unfold, for every shift a padding gives, widths 1-5 (the
    specialised 1-4 and the general loop) and both tap orders: compiled with -march=native for the
    CPU at hand, where a compiler's vectoriser has miscompiled such a loop before."""
    generator = torch.Generator().manual_seed(k)
    for c in range(1, 6):
        for shift in range(k):
            h, w = 9, 8
            out_h, out_w = h + 2 * shift - k + 1, w + 2 * shift - k + 1
            image = torch.randn(2, h, w, c, generator=generator)
            columns = F.unfold(F.pad(image.permute(0, 3, 1, 2), (shift,) * 4), k).view(2, c, k, k, out_h, out_w)
            for flip in (False, True):
                taps = columns.flip(2, 3) if flip else columns
                expected = taps.permute(0, 4, 5, 2, 3, 1).reshape(2, out_h, out_w, k * k * c)
                spread = torch.full(expected.shape, float("nan"))
                narrow._gather("spread", image, spread, k, c, shift, flip)
                torch.testing.assert_close(spread, expected, rtol=0, atol=0)
                # the sum is spread's adjoint: sum over taps of z[p + offset(tap), tap] for tap columns z
                z = torch.randn(2, out_h, out_w, k * k * c, generator=generator)  # on the spread's grid
                summed = torch.full((2, h, w, c), float("nan"))
                narrow._gather("sum", z, summed, k, c, k - 1 - shift, not flip)  # the adjoint's shift and tap order
                assert abs((summed * image).sum() - (z * spread).sum()) < 1e-5 * (z * spread).abs().sum()
