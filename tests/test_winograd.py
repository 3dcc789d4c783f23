"""Winograd 3x3, 4x4 and 5x5 convolutions (gan_style.nn.winograd): the same function as PyTorch's
direct convolution within their stated error, forward and backward (a gradient penalty through
them included), and chosen only where they apply."""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch
import torch.nn.functional as F

from gan_style.nn.layers import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_CHANNELS_FUSED, Conv2d
from gan_style.nn.winograd import _TRANSFORMS, OUTPUT_TILES, _transforms_1d, fused_transforms_apply, fused_winograd_available, winograd_conv2d

# largest error relative to the largest reference value, fp32 (F(2x2, 3x3) is as accurate as the
# direct convolution, ~1e-6; F(4x4, 3x3) and F(3x3, 4x4) with their points 0, 1, -1, 1/2, -2 ~3e-6;
# F(4x4, 5x5) on eight points ~1e-5)
TOLERANCE = {(2, 3): 3e-6, (4, 3): 1e-5, (3, 4): 1e-5, (4, 5): 3e-5}


@pytest.mark.parametrize(("m", "r"), list(_TRANSFORMS))
def test_the_one_dimensional_transforms_compute_a_correlation(m, r):
    """A^T [(G g) * (B^T d)] = (sum_j g_j d_(k+j))_k for every input tile d and kernel g."""
    input_t, kernel_t, output_t = _transforms_1d(m, r)
    assert input_t.shape == (m + r - 1, m + r - 1) and kernel_t.shape == (m + r - 1, r) and output_t.shape == (m, m + r - 1)
    # the bilinear form's coefficients: output k, kernel tap j, input l
    coefficients = torch.einsum("ki,ij,il->kjl", output_t, kernel_t, input_t)
    expected = torch.zeros_like(coefficients)
    for k in range(m):
        for j in range(r):
            expected[k, j, k + j] = 1
    assert torch.allclose(coefficients, expected, atol=1e-12)
    assert (output_t[:, 1] == 1).all()  # the point 1: the bias is added there


# skipped only where no compiler could build them; with one (and GAN_STYLE_NATIVE on), a build
# that fails is a failure, not a skip (test_the_fused_transforms_are_built_where_a_compiler_is)
needs_fused = pytest.mark.skipif(not fused_transforms_apply(torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last),
                                                            torch.randn(16, 16, 3, 3)),
                                 reason="the fused Winograd transforms are not built here (no C compiler, or GAN_STYLE_NATIVE=0)")


def test_the_fused_transforms_are_built_where_a_compiler_is():
    from gan_style.nn import native

    if not native.enabled() or native._compiler() is None:
        pytest.skip("no C compiler here, or GAN_STYLE_NATIVE=0: the PyTorch path runs")
    assert fused_winograd_available(), "winograd_kernels.c did not build with this machine's compiler (see the log)"


def _relative_errors(outputs, references):
    return [((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(outputs, references, strict=True)]


@pytest.mark.parametrize(("output_tile", "kernel"), list(_TRANSFORMS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("size", "padding", "bias"), [((18, 18), 0, True), ((16, 16), 1, True), ((13, 10), 1, True), ((9, 12), 1, False), ((4, 4), 0, True)])
def test_winograd_equals_the_direct_convolution_forward_and_backward(output_tile, kernel, channels_last, size, padding, bias):
    if min(size) + 2 * padding < kernel:
        pytest.skip(f"no output: a {size} input, padding {padding}, {kernel}x{kernel} kernel")
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 24, *size, generator=generator).contiguous(memory_format=memory_format)
    weight = (torch.randn(20, 24, kernel, kernel, generator=generator) / 15).contiguous(memory_format=memory_format)
    b = torch.randn(20, generator=generator) if bias else None
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    b64 = b.double().requires_grad_() if bias else None
    reference = F.conv2d(x64, w64, b64, padding=padding)
    grad_out = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    leaves64 = [x64, w64] + ([b64] if bias else [])
    references = [reference, *torch.autograd.grad(reference, leaves64, grad_out)]

    leaves = [t.clone().requires_grad_() for t in [x, weight] + ([b] if bias else [])]
    out = winograd_conv2d(leaves[0], leaves[1], leaves[2] if bias else None, padding, output_tile)
    grads = torch.autograd.grad(out, leaves, grad_out.float().contiguous(memory_format=memory_format))
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert max(_relative_errors([out, *grads], references)) < TOLERANCE[output_tile, kernel]
    # the layout is kept where the output is not cropped to a partial tile
    if channels_last and all((side + 2 * padding - kernel + 1) % output_tile == 0 for side in size):
        assert out.is_contiguous(memory_format=torch.channels_last)
    # the weight's gradient comes in the weight's layout (no copy when it is accumulated)
    assert grads[1].is_contiguous(memory_format=memory_format)


def test_winograd_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="square kernel of side 3, 4 or 5"):
        winograd_conv2d(torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 7, 7))
    with pytest.raises(ValueError, match="square kernel"):
        winograd_conv2d(torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 3, 5))
    with pytest.raises(ValueError, match="output_tile"):
        winograd_conv2d(torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 3, 3), output_tile=3)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_fused)])
@pytest.mark.parametrize("kernel", [3, 4, 5])
def test_a_gradient_penalty_through_winograd_is_the_direct_convolutions(kernel, fused):
    """create_graph (R1 through a discriminator) differentiates the direct convolution's backward;
    ``fused``: fp32 channels-last, through the fused C transforms' forward."""
    generator = torch.Generator().manual_seed(0)
    dtype, channels = (torch.float32, 16) if fused else (torch.float64, 8)
    x = torch.randn(2, channels, 9, 9, generator=generator, dtype=dtype)
    weight = torch.randn(16, channels, kernel, kernel, generator=generator, dtype=dtype) / (kernel * channels**0.5)
    bias = torch.randn(16, generator=generator, dtype=dtype)
    if fused:
        x = x.contiguous(memory_format=torch.channels_last)
    penalties = []
    for conv in (winograd_conv2d, F.conv2d):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = conv(leaves[0], leaves[1], leaves[2], padding=1)
        if conv is winograd_conv2d:
            assert (type(out.grad_fn).__name__ == "_NativeWinogradConvBackward") == fused
        (grad_x,) = torch.autograd.grad(out.square().sum(), leaves[0], create_graph=True)
        penalty = grad_x.square().sum()
        penalties.append([penalty, *torch.autograd.grad(penalty, leaves[1:])])
    for ours, direct in zip(*penalties, strict=True):
        assert torch.allclose(ours, direct, rtol=1e-4 if fused else 1e-6, atol=1e-5 * direct.abs().max().item() if fused else 0)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=needs_fused)])
def test_a_gradient_of_the_inputs_alone_skips_the_weights(fused, monkeypatch):
    """R1's first pass asks for the images' gradient only: no weight or bias gradient is computed,
    as PyTorch's convolution computes none (the engine is asked, not ``needs_input_grad``)."""
    from gan_style.nn import winograd

    asked = []
    monkeypatch.setattr(winograd, "pytorch_conv_backward", lambda *args, _run=winograd.pytorch_conv_backward, **kw: asked.append(tuple(args[3])) or _run(*args, **kw))
    x = torch.randn(2, 16, 9, 9)
    if fused:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight, bias = torch.randn(16, 16, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
    out = winograd_conv2d(x, weight, bias, padding=1, native=fused)
    torch.autograd.grad(out.square().sum(), x, create_graph=True)
    assert asked == [(True, False, False)]
    asked.clear()
    torch.autograd.grad(out.square().sum(), weight, create_graph=True)
    assert asked == [(False, True, False)]


WINOGRAD_BACKWARDS = {"_WinogradConvBackward", "_NativeWinogradConvBackward"}


def _computed_by_winograd(out: torch.Tensor) -> bool:
    """Whether a Winograd convolution is anywhere in the autograd graph behind ``out`` (the PyTorch
    path crops partial tiles, so it need not be the last node)."""
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if type(node).__name__ in WINOGRAD_BACKWARDS:
            return True
        seen.add(node)
        stack.extend(parent for parent, _ in node.next_functions)
    return False


def _ran_winograd(module: torch.nn.Module, *inputs: torch.Tensor) -> bool:
    return _computed_by_winograd(module(*inputs))


def test_conv2d_runs_winograd_only_where_it_applies():
    wide = WINOGRAD_MIN_CHANNELS[3]
    x = torch.randn(1, wide, 8, 8, requires_grad=True)
    conv = Conv2d(wide, wide, 3, padding=1)
    assert not _ran_winograd(conv, x)  # "direct" unless the trainer sets it
    conv.kernel = "winograd"
    assert _ran_winograd(conv, x)
    with torch.no_grad():
        assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5)
    for other in (Conv2d(wide, wide, 3, stride=2, padding=1), Conv2d(wide, wide, 3, padding=1, padding_mode="reflect"),
                  Conv2d(wide, wide, 5, padding=2), Conv2d(wide, wide // 2, 3, padding=1), Conv2d(wide, wide, 3, padding=1, dilation=1, groups=2)):
        other.kernel = "winograd"
        assert not _ran_winograd(other, x)
    patch = Conv2d(WINOGRAD_MIN_CHANNELS[4], wide, 4, padding=1)  # a PatchGAN discriminator's stride-1 4x4 layer
    patch.kernel = "winograd"
    patch_input = torch.randn(1, WINOGRAD_MIN_CHANNELS[4], 10, 10, requires_grad=True)  # 9x9 out: whole 3x3 tiles
    assert _ran_winograd(patch, patch_input)
    for other in (Conv2d(3, wide, 4, padding=1), Conv2d(wide, 1, 4, padding=1), Conv2d(wide, wide, 4, stride=2, padding=1)):
        other.kernel = "winograd"
        assert not _ran_winograd(other, torch.randn(1, other.in_channels, 10, 10, requires_grad=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 step's convolutions run directly in bf16
        assert conv(x).dtype == torch.bfloat16
    assert not _ran_winograd(conv.double(), x.double())


def test_the_stylegan2_layers_run_winograd_where_one_weight_serves_the_batch():
    """EqualConv2d and ModulatedConv2d (the Swapping Autoencoder's input modulation, or none: SinCUT's
    decoder) at stride 1 are one convolution for the whole batch: by Winograd, the same function and
    gradients (the modulation's included); per-sample weights (StyleGAN2's eq. 3) and the up- and
    down-sampling convolutions stay direct."""
    from gan_style.engine.kernels import set_conv_kernel
    from gan_style.nn.stylegan2 import EqualConv2d, ModulatedConv2d

    wide = WINOGRAD_MIN_CHANNELS[3]
    style = torch.randn(2, 16, requires_grad=True)
    layers = {"equal": (EqualConv2d(wide, wide, 3, padding=1), ()), "unpadded": (EqualConv2d(wide, wide, 3, bias=False), ()),
              "input-modulated": (ModulatedConv2d(wide, wide, 3, style_dim=16, modulate_input=True), (style,)),
              "unmodulated": (ModulatedConv2d(wide, wide, 3), ())}
    nchw = torch.randn(2, wide, 9, 11)
    for x, (name, (layer, inputs)) in itertools.product((nchw, nchw.contiguous(memory_format=torch.channels_last)), layers.items()):
        x.requires_grad_()
        outputs = {}
        for kernel in ("direct", "winograd"):
            set_conv_kernel(layer, kernel)
            out = layer(x, *inputs)
            assert _computed_by_winograd(out) == (kernel == "winograd"), (name, kernel)
            gradients = torch.autograd.grad(out.square().sum(), [x, *inputs, *layer.parameters()])
            outputs[kernel] = (out, *gradients)
        for direct, winograd in zip(outputs["direct"], outputs["winograd"], strict=True):
            assert (winograd - direct).abs().max() <= TOLERANCE[4, 3] * direct.abs().max(), name
    for layer, inputs in ((ModulatedConv2d(wide, wide, 3, style_dim=16), (style,)), (ModulatedConv2d(wide, wide, 3, upsample=True), ()),
                          (ModulatedConv2d(wide, wide, 3, downsample=True), ()), (EqualConv2d(wide, wide, 3, stride=2), ())):
        set_conv_kernel(layer, "winograd")
        assert not _ran_winograd(layer, nchw, *inputs), layer


def test_kernel_choice_of_the_convolutions():
    from gan_style.engine.kernels import choose_kernels

    forced = choose_kernels("cpu", torch.float32, winograd=True)
    assert forced.conv_kernel == "winograd" and "3x3" in forced.describe()
    # where the fused transforms are built, the layout that runs them, and the report says so
    if fused_winograd_available():
        assert forced.channels_last and "winograd (fused C transforms)" in forced.describe()
    else:
        assert "fused" not in forced.describe()
    assert choose_kernels("cpu", torch.float32, winograd=False).conv_kernel == "direct"
    measured = choose_kernels("cpu", torch.float32)
    assert {"direct 3x3 convolutions", "winograd 3x3 convolutions"} <= set(measured.timings_ms)
    assert choose_kernels("cpu", torch.bfloat16, winograd=True).conv_kernel == "direct"
    # the StyleGAN2 family's EqualConv2d and ModulatedConv2d run it too
    assert choose_kernels("cpu", torch.float32, family="stylegan2", winograd=True).conv_kernel == "winograd"


def test_a_winograd_training_step_matches_the_direct_one():
    from gan_style.config import ConfigError
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method

    cls = get_method("cyclegan")
    results = {}
    for winograd in (False, True):
        # ngf 32: 128-channel residual blocks, wide enough for Winograd; ndf 16: the
        # discriminators' stride-1 4x4 layer is 64 -> 128
        settings = {"train.winograd": winograd, "train.channels_last": True, "ngf": 32, "ndf": 16, "netG": "resnet_6blocks",
                    "data.crop_size": 32, "data.load_size": 32}
        trainer = Trainer(cls(config_from_overrides(cls, None, settings)), show_progress=False)
        convs = [m for net in trainer.networks.values() for m in net.modules() if isinstance(m, Conv2d)]
        assert {m.kernel for m in convs} == {"winograd" if winograd else "direct"}
        wide = [m for m in convs if m.kernel_size[0] in WINOGRAD_MIN_CHANNELS and m.stride == (1, 1)
                and min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS[m.kernel_size[0]]]
        assert sorted(m.kernel_size[0] for m in wide) == [3] * (2 * 6 * 2) + [4] * 2  # G_A, G_B; D_A, D_B
        batches = torch.Generator().manual_seed(0)
        losses = {k: float(v) for k, v in trainer.train_step(trainer.method.synthetic_batch(32, 1, batches)).items()}
        updated = torch.cat([p.detach().flatten() for net in trainer.networks.values() for p in net.parameters()])
        results[winograd] = losses, updated
    # the losses come from the same weights
    (direct, direct_weights), (winograd, winograd_weights) = results[False], results[True]
    assert direct.keys() == winograd.keys()
    for key, value in direct.items():
        assert winograd[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # so do the gradients: after Adam's first step (lr * sign(gradient), nearly) every weight is
    # where the direct run put it, but for a few whose gradient is near zero and changed sign.
    # Measured: 0.10 %, as many as the direct convolution's own rounding moves when only the
    # layout changes (NCHW against channels-last: 0.10 %)
    moved_elsewhere = ((winograd_weights - direct_weights).abs() > 1e-6).float().mean().item()
    assert moved_elsewhere < 3e-3, f"{moved_elsewhere:.2%} of the weights took another first step"
    with pytest.raises(ConfigError, match="winograd"):
        config_from_overrides(cls, None, {"train.winograd": "sometimes"})


@needs_fused
@pytest.mark.parametrize("kernel", [3, 4, 5])
@pytest.mark.parametrize("weight_channels_last", [False, True])
@pytest.mark.parametrize(("size", "padding", "bias", "widths"), [((16, 16), 1, True, (32, 48)), ((18, 13), 0, True, (16, 32)),
                                                                 ((13, 10), 1, False, (48, 16)), ((3, 5), 1, True, (16, 16))])
def test_the_fused_transforms_equal_the_direct_convolution_and_the_pytorch_path(kernel, weight_channels_last, size, padding, bias, widths):
    """winograd_kernels.c: the zero padding and partial edge tiles read as zeros, the output written
    cropped, every gradient; the same numbers as the PyTorch path to rounding."""
    generator = torch.Generator().manual_seed(1)
    c_in, c_out = widths
    x = torch.randn(2, c_in, *size, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=generator) / (kernel * c_in**0.5)
    if weight_channels_last:
        weight = weight.contiguous(memory_format=torch.channels_last)
    b = torch.randn(c_out, generator=generator) if bias else None
    leaves64 = [t.double().requires_grad_() for t in [x, weight] + ([b] if bias else [])]
    reference = F.conv2d(*leaves64[:2], leaves64[2] if bias else None, padding=padding)
    grad_out = torch.randn(reference.shape, generator=generator, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    references = [reference, *torch.autograd.grad(reference, leaves64, grad_out)]
    results = {}
    for native in (None, False):
        leaves = [t.clone().requires_grad_() for t in [x, weight] + ([b] if bias else [])]
        out = winograd_conv2d(leaves[0], leaves[1], leaves[2] if bias else None, padding, native=native)
        assert (type(out.grad_fn).__name__ == "_NativeWinogradConvBackward") == (native is None)
        grads = torch.autograd.grad(out, leaves, grad_out.float())
        assert out.shape == reference.shape
        if native is None:  # written cropped, in the input's layout, the gradients in their leaves' layouts
            assert out.is_contiguous(memory_format=torch.channels_last) and grads[0].is_contiguous(memory_format=torch.channels_last)
            assert grads[1].is_contiguous(memory_format=torch.channels_last if weight_channels_last else torch.contiguous_format)
        assert max(_relative_errors([out, *grads], references)) < TOLERANCE[OUTPUT_TILES[kernel][0], kernel]
        results[native] = [out, *grads]
    assert max(_relative_errors(results[None], [t.double() for t in results[False]])) < 1e-5


@needs_fused
def test_conv2d_runs_the_fused_transforms_on_narrower_layers():
    """Channels-last fp32 inputs take the fused path, which pays from 64 channels (the ResNet
    generators' 128x128 layers of CUT); NCHW ones keep the PyTorch path's threshold."""
    conv = Conv2d(WINOGRAD_MIN_CHANNELS_FUSED[3], WINOGRAD_MIN_CHANNELS[3], 3, padding=1)
    conv.kernel = "winograd"
    x = torch.randn(1, conv.in_channels, 8, 8)
    assert _ran_winograd(conv, x.contiguous(memory_format=torch.channels_last).requires_grad_())
    assert not _ran_winograd(conv, x.requires_grad_())


def test_the_native_loader_falls_back_and_keys_its_cache(tmp_path, monkeypatch, caplog):
    """No compiler, a failing build or GAN_STYLE_NATIVE=0: None (the PyTorch path), one log line;
    a build is cached per source and CPU, and written atomically."""
    from gan_style.nn import native

    monkeypatch.setenv("GAN_STYLE_CACHE", str(tmp_path))
    source = "int gs_answer(void) { return 42; }\n"
    monkeypatch.setenv("GAN_STYLE_NATIVE", "0")
    assert native.compile_library("probe_off", source) is None
    monkeypatch.setenv("GAN_STYLE_NATIVE", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger="gan_style.nn.native"):
        assert native.compile_library("probe_missing", source) is None
    assert "PyTorch path runs instead" in caplog.text
    if not shutil.which("cc"):
        pytest.skip("no C compiler here (cc)")
    monkeypatch.setenv("CC", shutil.which("cc"))
    with caplog.at_level("WARNING", logger="gan_style.nn.native"):
        assert native.compile_library("probe_broken", "this is not C") is None
    assert "compiling probe_broken failed" in caplog.text
    library = native.compile_library("probe", source)
    assert library.gs_answer() == 42
    built = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].startswith("probe-") and built[0].endswith(".so")  # no temporaries left
    monkeypatch.setattr(native, "_cpu_identity", lambda: "another CPU")
    native.compile_library("probe", source + "\n")
    assert len(list((tmp_path / "native").iterdir())) == 2


@needs_fused
def test_torch_compile_runs_the_fused_transforms_eagerly():
    """train.compile=true: inductor must not trace the C kernels (they write through data_ptr(),
    which it does not see; traced, the output was garbage), so they stay an eager island."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), Conv2d(64, 64, 3, padding=1))
    net = net.to(memory_format=torch.channels_last)
    for conv in (net[0], net[2]):
        conv.kernel = "winograd"
    x = torch.randn(2, 64, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    eager = net(x)
    assert type(eager.grad_fn).__name__ == "_NativeWinogradConvBackward"
    compiled = torch.compile(net)(x)
    for ours, reference in zip((compiled, *torch.autograd.grad(compiled.square().sum(), [x, net[0].weight])),
                               (eager, *torch.autograd.grad(eager.square().sum(), [x, net[0].weight])), strict=True):
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_a_swapping_autoencoder_step_by_winograd_matches_the_direct_one(monkeypatch):
    """The StyleGAN2 family's whole training step (both phases, the lazy R1 penalties through the
    Winograd layers included) by Winograd: the losses of the direct step, and updates that differ
    from its updates no more than a change of memory layout makes them differ. The thresholds are
    lowered so that the test's narrow networks have Winograd layers."""
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method
    from gan_style.nn import layers, winograd

    for thresholds in (layers.WINOGRAD_MIN_CHANNELS, layers.WINOGRAD_MIN_CHANNELS_FUSED):
        for side in thresholds:
            monkeypatch.setitem(thresholds, side, 16)
    calls = []
    monkeypatch.setattr(winograd, "winograd_conv2d", lambda *args, _run=winograd.winograd_conv2d: calls.append(1) or _run(*args))
    cls = get_method("swapae")
    results = {}
    for name, kernel, channels_last in (("direct", False, True), ("nchw", False, False), ("winograd", True, True)):
        calls.clear()
        settings = {"train.winograd": kernel, "train.channels_last": channels_last, "data.crop_size": 32, "data.load_size": 32}
        trainer = Trainer(cls(config_from_overrides(cls, "smoke", settings)), show_progress=False)
        before = torch.cat([p.detach().flatten() for net in trainer.networks.values() for p in net.parameters()])
        batches = torch.Generator().manual_seed(0)
        losses = [{k: float(v) for k, v in trainer.train_step(trainer.method.synthetic_batch(32, 2, batches)).items()} for _ in range(2)]
        assert bool(calls) == kernel
        after = torch.cat([p.detach().flatten() for net in trainer.networks.values() for p in net.parameters()])
        results[name] = losses, after - before
    (direct, direct_update), (by_winograd, winograd_update) = results["direct"], results["winograd"]
    for step, (direct_step, winograd_step) in enumerate(zip(direct, by_winograd, strict=True)):
        assert direct_step.keys() == winograd_step.keys()
        for key, value in direct_step.items():
            # the D phase of the first step runs on the same weights; its R1 phase and the next step
            # on weights after an Adam step, whose sign flips where a gradient is near zero (R1 0.07 %)
            before_an_update = step == 0 and not key.startswith("loss/D_R1")
            assert winograd_step[key] == pytest.approx(value, rel=1e-4 if before_an_update else 3e-3, abs=1e-5), key

    def changed(update):  # the share of weights whose update is not within 10 % of the direct one's
        return ((update - direct_update).abs() > 0.1 * direct_update.abs()).float().mean().item()

    # measured: 0.13 % either way (the second Adam step of D, after R1, amplifies any rounding)
    assert changed(winograd_update) <= 1.5 * changed(results["nchw"][1]) + 1e-3


@needs_fused
def test_the_fused_path_reuses_its_scratch_buffers():
    """The fused path's transient buffers are kept and reused (fresh ones cost the kernel's page
    zeroing), at most ``KEPT`` of them, and reuse changes no result."""
    from gan_style.nn.winograd import release_scratch_buffers, scratch

    def forward_backward(x, weight):
        x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
        out = winograd_conv2d(x, weight, padding=1)
        return (out, *torch.autograd.grad(out.square().sum(), [x, weight]))

    release_scratch_buffers()
    large = torch.randn(2, 32, 24, 24).contiguous(memory_format=torch.channels_last), torch.randn(48, 32, 3, 3)
    small = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(16, 16, 5, 5)
    first = forward_backward(*large)
    kept = {buffer.data_ptr() for buffer in scratch.free}
    assert 0 < len(kept) <= scratch.KEPT
    forward_backward(*small)  # served from the large layer's buffers
    again = forward_backward(*large)
    assert {buffer.data_ptr() for buffer in scratch.free} == kept
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    release_scratch_buffers()
    assert not scratch.free
