"""The bf16 3x3 convolution by the CPU's matrix tiles (gan_style.nn.tiles): its forward and input
gradient rounded once from fp32 sums, its weight gradient the fp32 gradient of the bf16
convolution, to fp32 rounding; the layer's fp32 master weight and bias get it straight; the weight
is packed once per version; it runs only where it applies and only on CPUs with AMX (skipped
elsewhere, with the reason)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_style.engine.kernels import set_conv_kernel
from gan_style.nn import tiles
from gan_style.nn.layers import Conv2d, weight_casts
from gan_style.nn.measured import MeasuredChoices
from gan_style.nn.tiles import tile_conv_applies, tile_gradient_choices, tile_kernels_available, tile_weight_gradient

needs_tiles = pytest.mark.skipif(not tile_kernels_available(), reason="no AMX tile unit here (amx_tile/amx_bf16), or no C compiler")

#: (batch, in, out, height, width): the residual blocks' 256 channels at 32x32, two images, widths
#: that are no multiple of 16 (a row's last pixels one by one), a single pixel, more in than out
SHAPES = [(1, 256, 256, 32, 32), (2, 64, 96, 17, 13), (3, 32, 32, 5, 7), (2, 32, 64, 33, 40), (1, 32, 32, 1, 1), (2, 96, 32, 6, 3)]


def _bf16(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(*shape, generator=generator).bfloat16()
    return values.contiguous(memory_format=torch.channels_last) if values.dim() == 4 else values


@pytest.fixture
def poisoned_scratch():
    """The kernels' scratch buffers filled with NaNs as each call takes them: a value a kernel reads
    without writing it first shows."""
    if tile_kernels_available():
        tiles._library().gs_tiles_poison_scratch(1)
    yield
    if tile_kernels_available():
        tiles._library().gs_tiles_poison_scratch(0)
        tiles.release_tile_buffers()


#: (kernel size, zero padding): the residual blocks' layers (reflection-padded before), CUT's
#: resampling convolutions, the PatchGAN discriminators' stride-1 layer, and the fourth
KERNELS = [(3, 0), (3, 1), (4, 1), (4, 0)]


def _input(shape, kernel_size, padding):
    """An input for which the output is (h, w) of ``shape``."""
    n, c_in, _, h, w = shape
    grow = kernel_size - 1 - 2 * padding
    return _bf16(n, c_in, h + grow, w + grow, seed=0)


@needs_tiles
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_tile_weight_gradient_is_the_convolutions_in_fp32(shape, kernel, poisoned_scratch):
    n, c_in, c_out, h, w = shape
    kernel_size, padding = kernel
    x, grad_out = _input(shape, *kernel), _bf16(n, c_out, h, w, seed=1)
    weight = torch.zeros(c_out, c_in, kernel_size, kernel_size, dtype=torch.float64)
    _, expected_weight, expected_bias = torch.ops.aten.convolution_backward(
        grad_out.double(), x.double(), weight, [c_out], [1, 1], [padding] * 2, [1, 1], False, [0, 0], 1, [False, True, True])
    grad_weight, grad_bias = tile_weight_gradient(x, grad_out, padding)
    assert grad_weight.dtype == grad_bias.dtype == torch.float32
    assert grad_weight.shape == weight.shape and grad_weight.is_contiguous(memory_format=torch.channels_last)
    # fp32 sums of exact products: ~1e-7 of the largest entry (oneDNN's bf16 result: ~3e-3)
    for ours, expected in ((grad_weight, expected_weight), (grad_bias, expected_bias)):
        assert torch.isfinite(ours).all()
        assert (ours.double() - expected).abs().max() <= 2e-6 * expected.abs().max()


def _rounded_once(ours: torch.Tensor, expected: torch.Tensor) -> bool:
    """Each value its fp32 sum rounded to bf16 once: within half a bf16 step (2^-8 of itself)."""
    return bool(((ours.double() - expected).abs() <= 2**-8 * expected.abs() + 1e-6 * expected.abs().max()).all())


@needs_tiles
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_tile_input_gradient_is_the_convolutions_rounded_once(shape, kernel, poisoned_scratch):
    n, c_in, c_out, h, w = shape
    kernel_size, padding = kernel
    grad_out, weight = _bf16(n, c_out, h, w, seed=1), _bf16(c_out, c_in, kernel_size, kernel_size, seed=2)
    x = torch.zeros(_input(shape, *kernel).shape, dtype=torch.float64)
    expected = torch.ops.aten.convolution_backward(grad_out.double(), x, weight.double(), None, [1, 1], [padding] * 2, [1, 1], False,
                                                   [0, 0], 1, [True, False, False])[0]
    grad_input = tiles.tile_input_gradient(grad_out, tiles.weight_packs(weight.float())[1], c_in, kernel_size, padding)
    assert grad_input.dtype == torch.bfloat16 and grad_input.shape == x.shape
    assert grad_input.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(grad_input).all()
    assert _rounded_once(grad_input, expected)


@needs_tiles
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_tile_forward_is_the_convolution_rounded_once(shape, kernel, with_bias, poisoned_scratch):
    n, c_in, c_out, h, w = shape
    kernel_size, padding = kernel
    x, weight = _input(shape, *kernel), _bf16(c_out, c_in, kernel_size, kernel_size, seed=2)
    bias = _bf16(c_out, seed=3) if with_bias else None
    expected = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=padding)
    out = tiles.tile_forward(x, tiles.weight_packs(weight.float())[0], bias, kernel_size, padding)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape == (n, c_out, h, w)
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.isfinite(out).all()
    assert _rounded_once(out, expected)
    # oneDNN's bf16 convolution: the same but for a sum rounded the other way now and then
    assert (out != F.conv2d(x, weight, bias, padding=padding)).float().mean() < 1e-3


@needs_tiles
def test_the_packs_are_the_bf16_weight_rearranged():
    """Both packs hold each weight value rounded to bf16 once (the cast's value), each exactly once."""
    weight = torch.randn(64, 96, 3, 3).contiguous(memory_format=torch.channels_last)
    forward, input_gradient = tiles.weight_packs(weight)
    expected = weight.bfloat16().flatten().view(torch.int16).sort().values
    for pack in (forward, input_gradient):
        assert torch.equal(pack.view(torch.int16).sort().values, expected)
    # the forward of a one-pixel image picks out one tap's column of W per output channel
    x = torch.zeros(1, 96, 3, 3).bfloat16().contiguous(memory_format=torch.channels_last)
    x[0, 5, 1, 2] = 1.0  # tap (1, 2) of input channel 5
    out = tiles.tile_forward(x, forward, None)
    assert torch.equal(out[0, :, 0, 0], weight[:, 5, 1, 2].bfloat16())


@needs_tiles
def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        tile_weight_gradient(_bf16(1, 32, 10, 10, seed=0), _bf16(1, 32, 6, 6, seed=1))  # 5x5
    with pytest.raises(ValueError, match="multiples of 32"):
        tile_weight_gradient(_bf16(1, 48, 10, 10, seed=0), _bf16(1, 32, 8, 8, seed=1))
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        tiles.weight_packs(torch.zeros(32, 32, 5, 5))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiles.weight_packs(torch.zeros(32, 48, 3, 3))
    packs = tiles.weight_packs(torch.zeros(32, 32, 3, 3))
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        tiles.tile_input_gradient(_bf16(1, 32, 8, 8, seed=0), packs[1], 64)
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        tiles.tile_forward(_bf16(1, 64, 8, 8, seed=0), packs[0], None)
    with pytest.raises(ValueError, match="3x3 or 4x4"):
        tiles.tile_forward(_bf16(1, 32, 8, 8, seed=0), packs[0], None, 3, 2)  # padding 2


def _layer_gradients(conv, x, uses=1):
    """The gradients of conv's weight and bias and of x, through ``uses`` uses of conv in one bf16
    step (a generator's forward and its encoder pass), and the outputs."""
    conv.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    outputs = []
    with weight_casts(torch.bfloat16), torch.autocast("cpu", dtype=torch.bfloat16):
        for use in range(uses):
            outputs.append(conv(x if use == 0 else F.pad(outputs[-1].float(), (1,) * 4, mode="reflect")))
    loss = sum(out.float().square().mean() * (i + 1) for i, out in enumerate(outputs))
    loss.backward()
    return conv.weight.grad, conv.bias.grad, x.grad, outputs


@needs_tiles
@pytest.mark.parametrize("uses", [1, 2])
@pytest.mark.parametrize("kernel", [(3, 0), (4, 1)])
def test_a_layer_gives_its_fp32_master_the_gradient_of_its_bf16_convolution(uses, kernel, monkeypatch):
    torch.manual_seed(0)
    conv = Conv2d(64, 64, kernel[0], padding=kernel[1]).to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 12, 12).contiguous(memory_format=torch.channels_last)
    conv.weight_gradient = "direct"
    direct = _layer_gradients(conv, x, uses)
    conv.weight_gradient = "measured"
    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)  # the tiles, whatever the timings
    _forget_verdicts()
    assert tile_conv_applies(conv, x) is False  # outside autocast: PyTorch's convolution
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tile_conv_applies(conv, x)
    tiled = _layer_gradients(conv, x, uses)
    for choices in (tile_gradient_choices(), tiles.tile_forward_choices()):
        assert choices and all(v["kernel"] == "tiles" for v in choices.values())
    for out_direct, out_tiled in zip(direct[3], tiled[3], strict=True):  # the forward: rounded once from fp32 sums, as PyTorch's
        assert (out_direct != out_tiled).float().mean() < 1e-3
        torch.testing.assert_close(out_tiled.float(), out_direct.float(), rtol=2**-7, atol=1e-6)
    # the input gradient: fp32 sums rounded to bf16 once, as PyTorch's (the same but for the
    # rounding of a sum now and then: here 2 of 18432 values by one bf16 step); the weight's and
    # bias's: fp32 (PyTorch's are rounded to bf16 and summed over the uses in bf16)
    assert tiled[2].dtype == direct[2].dtype == torch.float32
    torch.testing.assert_close(tiled[2], direct[2], rtol=8e-3, atol=1e-3 * direct[2].abs().max().item())
    for ours, theirs in zip(tiled[:2], direct[:2], strict=True):
        assert ours.dtype == torch.float32 and ours.stride() == theirs.stride()
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2 * theirs.abs().max().item())
    _forget_verdicts()


@needs_tiles
def test_torch_compile_runs_the_tile_kernels_eagerly(monkeypatch):
    """train.compile=true: inductor must not trace the C kernels (they write through data_ptr(),
    which it does not see), so the layer stays an eager island with the same values."""
    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)
    _forget_verdicts()
    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv2d(32, 32, 4, padding=1), torch.nn.ReLU(), Conv2d(32, 32, 3)).to(memory_format=torch.channels_last)
    for conv in (net[0], net[2]):
        conv.weight_gradient = "measured"
    x = torch.randn(1, 32, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    results = []
    for model in (net, torch.compile(net)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        results.append((out, *torch.autograd.grad(out.float().square().sum(), [x, net[0].weight])))
    assert any(v["kernel"] == "tiles" for v in tiles.tile_forward_choices().values())
    for ours, reference in zip(*results, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-2, atol=1e-2 * reference.abs().max().item())
    _forget_verdicts()


@needs_tiles
def test_a_frozen_layer_passes_the_input_gradient_back_by_tiles(monkeypatch):
    """A frozen discriminator's layer (the generator's phase): the input's gradient by the tile
    kernel, as PyTorch's but for a rounding now and then; no weight gradient."""
    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)
    _forget_verdicts()
    torch.manual_seed(0)
    conv = Conv2d(64, 96, 4, padding=1).to(memory_format=torch.channels_last).requires_grad_(False)
    x = torch.randn(2, 64, 11, 9).contiguous(memory_format=torch.channels_last)
    grads = {}
    for kernel in ("direct", "measured"):
        conv.weight_gradient = kernel
        leaf = x.clone().requires_grad_()
        with weight_casts(torch.bfloat16), torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(leaf)
        out.float().square().mean().backward()
        grads[kernel] = leaf.grad
        assert conv.weight.grad is None and conv.bias.grad is None
    assert any("input gradient only" in shape and v["kernel"] == "tiles" for shape, v in tile_gradient_choices().items())
    torch.testing.assert_close(grads["measured"], grads["direct"], rtol=8e-3, atol=1e-3 * grads["direct"].abs().max().item())
    _forget_verdicts()


@needs_tiles
def test_once_chosen_a_step_packs_each_weight_once_and_casts_it_never(monkeypatch):
    """With the tiles chosen both ways, a weight used twice in a step is packed once (straight from
    its fp32 master) and never cast to bf16; after an optimiser step, packed again."""
    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)
    _forget_verdicts()
    torch.manual_seed(0)
    conv = Conv2d(32, 32, 3).to(memory_format=torch.channels_last)
    conv.weight_gradient = "measured"
    x = torch.randn(1, 32, 10, 10).contiguous(memory_format=torch.channels_last)
    _layer_gradients(conv, x, uses=2)  # the first step measures: both ways run
    library, packs, casts = tiles._library(), [], []
    monkeypatch.setattr(tiles, "_library", lambda: _Counting(library, packs))
    monkeypatch.setattr(tiles, "_weight_cast", lambda weight, x: casts.append(weight))
    first = _layer_gradients(conv, x, uses=2)
    assert len(packs) == 1 and not casts
    with torch.no_grad():
        conv.weight.add_(1.0)  # an optimiser step: a new version
    _layer_gradients(conv, x, uses=2)
    assert len(packs) == 2 and not casts
    assert torch.isfinite(first[0]).all() and first[0].abs().sum() > 0
    _forget_verdicts()


class _Counting:
    """The tile library, recording each weight pack."""

    def __init__(self, library, packs):
        self.library, self.packs = library, packs

    def __getattr__(self, name):
        function = getattr(self.library, name)
        if name != "gs_tile_pack_fp32":
            return function
        return lambda *args: (self.packs.append(args), function(*args))[1]


def _forget_verdicts():
    tiles.verdicts.forget()
    tiles.forward_verdicts.forget()


@needs_tiles
def test_a_gradient_penalty_through_the_layer_is_differentiated(monkeypatch):
    """create_graph (R1): the backward is PyTorch's, which autograd differentiates once more."""
    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)
    _forget_verdicts()
    torch.manual_seed(0)
    conv = Conv2d(32, 32, 3).to(memory_format=torch.channels_last)
    conv.weight_gradient = "measured"
    x = torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    (grad_x,) = torch.autograd.grad(out.float().square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0
    _forget_verdicts()


def test_only_the_layers_it_is_for_apply():
    x = torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not tile_conv_applies(Conv2d(32, 32, 3, padding=2), x)
        assert not tile_conv_applies(Conv2d(32, 32, 3, padding=1, padding_mode="reflect"), x)
        assert not tile_conv_applies(Conv2d(32, 32, 3, stride=2), x)
        assert not tile_conv_applies(Conv2d(32, 32, 5), x)
        assert not tile_conv_applies(Conv2d(32, 32, 4), x[..., :3, :3])  # no output pixel
        assert not tile_conv_applies(Conv2d(32, 48, 3), x)  # channels not in 32s
        assert not tile_conv_applies(Conv2d(32, 32, 3), x.contiguous())  # not channels-last
        frozen = Conv2d(32, 32, 3).requires_grad_(False)  # a discriminator in the generator's phase: its input gradient
        assert tile_conv_applies(frozen, x) == tile_kernels_available()
        with torch.no_grad():
            assert not tile_conv_applies(Conv2d(32, 32, 3), x)
        for layer in (Conv2d(32, 32, 3), Conv2d(32, 32, 3, padding=1), Conv2d(32, 64, 4, padding=1), Conv2d(64, 32, 4)):
            assert tile_conv_applies(layer, x if layer.in_channels == 32 else x.repeat(1, 2, 1, 1).contiguous(memory_format=torch.channels_last)) == tile_kernels_available()
    with torch.autocast("cpu", dtype=torch.float16):
        assert not tile_conv_applies(Conv2d(32, 32, 3), x)


@needs_tiles
def test_a_bf16_training_step_takes_its_residual_weight_gradients_from_the_tiles(monkeypatch):
    """FastCUT at ngf 8 (32-channel residual blocks) in bf16: the trainer chooses the measured 3x3
    weight gradients, the step runs the residual layers by tiles, and G's optimiser gets the
    gradients PyTorch's backward gives, up to PyTorch's bf16 rounding of them."""
    from gan_style.engine import optimizers
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method

    monkeypatch.setattr(MeasuredChoices, "verdict", lambda self, direct_ms, other_ms: self.alternative)
    _forget_verdicts()
    stepped: list[dict[int, torch.Tensor]] = []
    adam_step = optimizers.Adam.step

    def recording_step(self, closure=None):
        stepped.append({id(p): p.grad.clone() for group in self.param_groups for p in group["params"] if p.grad is not None})
        return adam_step(self, closure)

    monkeypatch.setattr(optimizers.Adam, "step", recording_step)
    method = get_method("fastcut")
    settings = {"ngf": 8, "train.mixed_precision": "bf16", "train.precision_fallback": False, "flip_equivariance": False}
    grads = {}
    for kernel in ("measured", "direct"):
        trainer = Trainer(method(config_from_overrides(method, "smoke", settings)), show_progress=False)
        assert trainer.kernels.tile_gradients and trainer.kernels.weight_gradient == "measured"
        if kernel == "direct":
            for net in trainer.networks.values():
                set_conv_kernel(net, trainer.kernels.conv_kernel, "direct")
        stepped.clear()
        logs = trainer.train_step(trainer.method.synthetic_batch(32, 1, torch.Generator().manual_seed(0)))
        assert all(torch.isfinite(v).all() for v in logs.values())
        generator_step = next(step for step in stepped if id(next(trainer.unwrapped("G").parameters())) in step)
        grads[kernel] = {name: generator_step[id(p)] for name, p in trainer.unwrapped("G").named_parameters()}
        if kernel == "measured":
            shapes = tile_gradient_choices()
            assert shapes and all(v["kernel"] == "tiles" for v in shapes.values())
    residual = [name for name in grads["measured"] if ".conv_block." in name]
    assert residual
    # The weights' gradients agree to bf16's rounding (~1 % here, as it reaches them through the
    # network); the biases of convolutions followed by an instance norm are left out: their
    # gradient is zero, and both ways give only rounding noise
    for name, ours in grads["measured"].items():
        if name.endswith(".weight"):
            theirs = grads["direct"][name]
            assert (ours - theirs).norm() <= 3e-2 * theirs.norm(), name
    _forget_verdicts()
