"""The strided convolutions' weight gradient by im2col (gan_style.nn.strided): the same gradients as
PyTorch's convolution, chosen per shape by a measurement taken once, and only where it applies."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from gan_style.nn import strided
from gan_style.nn.layers import Conv2d
from gan_style.nn.strided import forget_weight_gradient_choices, im2col_weight_gradient, strided_conv2d, weight_gradient_choices

#: (batch, in, out, side, kernel, stride, padding): the layers' forms (3x3 stride 2 with and
#: without padding, PatchGAN's 4x4, the 1x1 skip) and odd ones (stride 3, an odd side, one image)
SHAPES = [(2, 16, 32, 17, 3, 2, 0), (3, 16, 32, 16, 3, 2, 1), (2, 16, 16, 18, 4, 2, 1), (1, 32, 16, 15, 1, 2, 0),
          (2, 16, 32, 20, 3, 3, 1), (5, 8, 24, 9, 3, 2, 0)]


def _inputs(n, c_in, c_out, side, k, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c_in, side, side, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, k, k, generator=generator).contiguous(memory_format=torch.channels_last) / (k * c_in**0.5)
    bias = torch.randn(c_out, generator=generator)
    return x, weight, bias


def _gradients(conv, x, weight, bias, grad_out_seed=1, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = conv(*leaves, **kwargs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed))
    return (out, *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("shape", SHAPES)
def test_im2col_weight_gradient_is_the_convolutions(shape):
    n, c_in, c_out, side, k, stride, padding = shape
    x, weight, _ = _inputs(n, c_in, c_out, side, k)
    out = F.conv2d(x, weight, stride=stride, padding=padding)
    grad_out = torch.randn_like(out)
    direct = torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride=stride, padding=padding)
    ours = im2col_weight_gradient(x, grad_out, weight, stride, padding)
    assert ours.shape == weight.shape and ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - direct).abs().max() <= 1e-5 * direct.abs().max()
    # an NCHW weight gets an NCHW gradient
    assert im2col_weight_gradient(x, grad_out, weight.contiguous(), stride, padding).is_contiguous()


def test_the_columns_are_gathered_block_by_block(monkeypatch):
    """Blocks of whole images, and of rows of one image where an image's columns exceed a block,
    give the whole matrix product's gradient."""
    x, weight, _ = _inputs(3, 16, 32, 21, 3)
    grad_out = torch.randn(3, 32, 10, 10)
    whole = im2col_weight_gradient(x, grad_out, weight, 2, 0)
    row = 10 * 16 * 9 * 4  # the bytes of one output row's columns
    for block in (2 * 10 * row, 3 * row, row, 1):  # two images; three rows; one row; less than a row
        monkeypatch.setattr(strided, "COLUMN_BLOCK_BYTES", block)
        blocks = list(strided._column_blocks(3, 10, row))
        covered = sorted((first + i, r) for first, images, start, rows in blocks for i in range(images) for r in range(start, start + rows))
        assert covered == [(i, r) for i in range(3) for r in range(10)]  # every image's every row, once
        assert (im2col_weight_gradient(x, grad_out, weight, 2, 0) - whole).abs().max() <= 1e-5 * whole.abs().max()


@pytest.mark.parametrize("shape", SHAPES)
def test_strided_conv2d_is_the_convolution_forward_and_backward(shape):
    n, c_in, c_out, side, k, stride, padding = shape
    inputs = _inputs(n, c_in, c_out, side, k)
    forget_weight_gradient_choices()
    ours = _gradients(strided_conv2d, *inputs, stride=stride, padding=padding)
    assert type(ours[0].grad_fn).__name__ == "_StridedConvBackward"
    direct = _gradients(F.conv2d, *inputs, stride=stride, padding=padding)
    for a, b in zip(ours, direct, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    again = _gradients(strided_conv2d, *inputs, stride=stride, padding=padding)  # by the chosen kernel, no new timing
    for a, b in zip(again, direct, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    (measured,) = weight_gradient_choices().values()
    assert measured["kernel"] in ("direct", "im2col") and measured["direct_ms"] > 0 and measured["im2col_ms"] > 0


def test_each_shape_is_timed_once_and_runs_the_faster_kernel(monkeypatch):
    ran, now = [], [0.0]  # a fake clock: im2col made to look 10x slower

    def pytorch_backward(*args, _run=strided.pytorch_conv_backward):
        if args[3][1]:  # the weight's gradient: PyTorch's whole backward, not im2col's input gradient
            ran.append("direct")
            now[0] += 1.0
        return _run(*args)

    def im2col(*args, _run=strided.im2col_weight_gradient):
        ran.append("im2col")
        now[0] += 10.0
        return _run(*args)

    monkeypatch.setattr(strided, "pytorch_conv_backward", pytorch_backward)
    monkeypatch.setattr(strided, "im2col_weight_gradient", im2col)
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])  # the clock gan_style.nn.measured reads
    forget_weight_gradient_choices()
    x, weight, bias = _inputs(2, 16, 32, 17, 3)
    _gradients(strided_conv2d, x, weight, bias, stride=2, padding=0)
    assert ran == ["direct", "im2col"] * 2 + ["direct"]  # timed twice each, alternating, then the faster once more
    (measured,) = weight_gradient_choices().values()
    assert measured["kernel"] == "direct"
    ran.clear()
    _gradients(strided_conv2d, x, weight, bias, stride=2, padding=0)
    _gradients(strided_conv2d, x[:1], weight, bias, stride=2, padding=0)  # another shape: timed
    assert ran == ["direct"] + ["direct", "im2col"] * 2 + ["direct"]
    assert len(weight_gradient_choices()) == 2
    forget_weight_gradient_choices()


def test_a_gradient_penalty_through_a_strided_convolution_is_pytorchs():
    """create_graph (R1 through a discriminator's strided layers) differentiates PyTorch's backward."""
    x, weight, bias = _inputs(2, 16, 32, 17, 3)
    penalties = []
    for conv in (strided_conv2d, F.conv2d):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = conv(*leaves, stride=2, padding=0)
        (grad_x,) = torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
        penalty = grad_x.square().sum()
        penalties.append([penalty, *torch.autograd.grad(penalty, leaves[1:])])
    for ours, direct in zip(*penalties, strict=True):
        assert torch.allclose(ours, direct, rtol=1e-5, atol=1e-6 * direct.abs().max().item())


def _ran_strided(module, x, *inputs):
    return type(module(x, *inputs).grad_fn).__name__ == "_StridedConvBackward"


def test_the_layers_run_it_only_where_it_applies():
    """Our Conv2d, EqualConv2d and the down-sampling ModulatedConv2d, set to "measured" by the
    trainer (fp32 CPU steps), in fp32 channels-last; never in bf16 or NCHW, at stride 1, with a
    frozen weight, or when not set."""
    from gan_style.engine.kernels import set_conv_kernel
    from gan_style.nn.stylegan2 import EqualConv2d, ModulatedConv2d

    x = torch.randn(2, 16, 17, 17).contiguous(memory_format=torch.channels_last)
    layers = [Conv2d(16, 32, 3, stride=2, padding=1), Conv2d(16, 32, 4, stride=2, padding=1), EqualConv2d(16, 32, 3, stride=2),
              ModulatedConv2d(16, 32, 3, downsample=True)]
    for layer in layers:
        assert not _ran_strided(layer, x)  # "direct" unless the trainer sets it
        set_conv_kernel(layer, "direct", "measured")
        assert _ran_strided(layer, x), layer
        with torch.no_grad():
            assert layer(x).grad_fn is None
        assert not _ran_strided(layer, x.contiguous())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _ran_strided(layer, x)
        layer.requires_grad_(False)
        assert not _ran_strided(layer, x.requires_grad_())
        x.requires_grad_(False)
    stride1 = Conv2d(16, 32, 3, padding=1)
    set_conv_kernel(stride1, "direct", "measured")
    assert not _ran_strided(stride1, x)
    per_sample = ModulatedConv2d(16, 32, 3, style_dim=8, downsample=True)  # grouped: one weight per image
    set_conv_kernel(per_sample, "direct", "measured")
    assert not _ran_strided(per_sample, x, torch.randn(2, 8))


def test_the_trainer_measures_them_in_fp32_cpu_steps_only():
    from gan_style.engine.kernels import choose_kernels

    assert choose_kernels("cpu", torch.float32, winograd=True).weight_gradient == "measured"
    assert "strided weight gradients by im2col" in choose_kernels("cpu", torch.float32, winograd=True).describe()
    assert choose_kernels("cpu", torch.float32, winograd=False).weight_gradient == "direct"
    # bf16 steps: the strided weight gradients stay PyTorch's; on a CPU with AMX the 3x3 ones are
    # measured against the tile kernel's (gan_style.nn.tiles, tests/test_tiles.py)
    from gan_style.nn.tiles import tile_kernels_available

    bf16 = choose_kernels("cpu", torch.bfloat16, winograd=True)
    assert bf16.tile_gradients == tile_kernels_available()
    assert bf16.weight_gradient == ("measured" if tile_kernels_available() else "direct")
    assert "im2col" not in bf16.describe()


def test_a_gradient_of_the_inputs_alone_skips_the_weights(monkeypatch):
    """R1's first pass (``autograd.grad`` of the images only, create_graph) computes no weight
    gradient, as PyTorch's own convolution does not; a full backward computes all three."""
    asked = []
    monkeypatch.setattr(strided, "pytorch_conv_backward", lambda *args, _run=strided.pytorch_conv_backward: asked.append(args[3]) or _run(*args))
    monkeypatch.setattr(strided.verdicts, "run", lambda key, direct, alternative: direct())  # PyTorch's kernel, untimed
    x, weight, bias = _inputs(2, 16, 32, 17, 3)
    for leaf_weight in (True, False):  # Conv2d's parameter, or EqualConv2d's scaled weight
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        conv_weight = leaves[1] if leaf_weight else leaves[1] * 1.0
        out = strided_conv2d(leaves[0], conv_weight, leaves[2], 2, 0)
        asked.clear()
        (grad_x,) = torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
        assert torch.autograd.grad(out.sum(), leaves[1], retain_graph=True)[0].shape == weight.shape  # a leaf asked for
        assert asked.pop() == (False, True, False)  # the weight alone, whether a leaf or not
        assert asked == [(True, False, False)]
        asked.clear()
        (out.sum() + grad_x.square().sum()).backward()
        assert asked[0] == (True, True, True)
        reference = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = F.conv2d(*reference, stride=2)
        (grad_x,) = torch.autograd.grad(out.square().sum(), reference[0], create_graph=True)
        (out.sum() + grad_x.square().sum()).backward()
        for ours, theirs in zip(leaves, reference, strict=True):
            assert (ours.grad - theirs.grad).abs().max() <= 1e-5 * theirs.grad.abs().max()


def test_the_im2col_kernel_sums_the_bias_gradient(monkeypatch):
    """Where im2col computes the weight's gradient, PyTorch is asked for the input's alone: asked
    for the bias's without the weight's, its oneDNN backward computes the weight's anyway and drops it."""
    asked, now = [], [0.0]  # a fake clock: PyTorch's whole backward made to look 10x slower

    def pytorch_backward(*args, _run=strided.pytorch_conv_backward):
        asked.append(tuple(args[3]))
        now[0] += 10.0 if args[3][1] else 0.0
        return _run(*args)

    monkeypatch.setattr(strided, "pytorch_conv_backward", pytorch_backward)
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    forget_weight_gradient_choices()
    inputs = _inputs(2, 16, 32, 17, 3)
    _gradients(strided_conv2d, *inputs, stride=2, padding=1)  # timed: im2col chosen
    (measured,) = weight_gradient_choices().values()
    assert measured["kernel"] == "im2col"
    asked.clear()
    ours = _gradients(strided_conv2d, *inputs, stride=2, padding=1)
    assert asked == [(True, False, False)]
    direct = _gradients(F.conv2d, *inputs, stride=2, padding=1)
    for a, b in zip(ours, direct, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    forget_weight_gradient_choices()
