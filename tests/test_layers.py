"""Shared layers (gan_style.nn.layers): padding in the input's dtype under autocast, and instance
norm, the same function in every kernel and layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_style.nn.layers import InstanceNorm2d, ReflectionPad2d, ReplicationPad2d, fused_norm_available, instance_norm


@pytest.mark.parametrize("ours,theirs", [(ReflectionPad2d, nn.ReflectionPad2d), (ReplicationPad2d, nn.ReplicationPad2d)])
def test_pads_keep_bf16_under_cpu_autocast_and_their_values(ours, theirs):
    x = torch.randn(2, 3, 9, 7).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert theirs(2)(x).dtype == torch.float32  # why these exist: autocast's fp32 list
        padded = ours(2)(x)
    assert padded.dtype == torch.bfloat16
    assert torch.equal(padded.float(), theirs(2)(x.float()))
    padded.float().sum().backward()
    (reference,) = torch.autograd.grad(theirs(2)(x.float()).sum(), x)
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad.float(), reference.float())
    assert torch.equal(ours(1)(x.float()), theirs(1)(x.float()))  # without autocast: the same module
    assert isinstance(ours(1), theirs)  # the exact tiler lowers them as padding


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("kernel", ["float32", "native", "batchnorm", "reductions", "contiguous"])
def test_instance_norm_is_the_same_function_for_every_kernel_and_layout(kernel, batch):
    torch.manual_seed(0)
    x = (torch.randn(batch, 5, 6, 7, dtype=torch.float64) * 3 + 2).requires_grad_()
    dy = torch.randn(batch, 5, 6, 7, dtype=torch.float64)
    expected = nn.InstanceNorm2d(5)(x)
    (expected_grad,) = torch.autograd.grad(expected, x, dy)
    norm = InstanceNorm2d(5, affine=False, track_running_stats=False)
    norm.kernel = kernel
    for layout in (lambda t: t, _channels_last):
        y = norm(layout(x))
        (grad,) = torch.autograd.grad(y, x, layout(dy))
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
        assert y.is_contiguous(memory_format=torch.channels_last) == (layout is _channels_last)


def test_channels_last_instance_norm_gradcheck():
    x = _channels_last(torch.randn(2, 3, 5, 4, dtype=torch.float64) + 4).requires_grad_()
    assert torch.autograd.gradcheck(InstanceNorm2d(3), (x,))


def test_channels_last_instance_norm_is_accurate_when_the_mean_dwarfs_the_spread():
    # PyTorch's CPU channels-last group norm takes E[x²] - E[x]² in fp32: 0.06 max error here
    torch.manual_seed(0)
    x = torch.randn(2, 64, 32, 32) + 100
    expected = nn.InstanceNorm2d(64)(x.double())
    assert (InstanceNorm2d(64)(_channels_last(x)).double() - expected).abs().max() < 1e-4


@pytest.mark.parametrize("kernel", ["batchnorm", "fused"])
def test_channels_last_instance_norm_in_bf16_autocast(kernel):
    torch.manual_seed(0)
    x = _channels_last(torch.randn(2, 16, 24, 20) * 2 + 30).bfloat16().requires_grad_()
    dy = _channels_last(torch.randn(2, 16, 24, 20)).bfloat16()
    norm = InstanceNorm2d(16)
    norm.kernel = kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
        z = nn.ReLU(inplace=True)(y)  # the output is no view: an in-place ReLU may follow
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    z.backward(dy)
    reference_x = x.detach().double().requires_grad_()
    reference = nn.InstanceNorm2d(16)(reference_x).relu()  # y is z: the ReLU overwrote it
    reference.backward(dy.double())
    # bf16 keeps 8 significant bits: within 2 of its units in the last place (2^-7 relative)
    assert (y.double() - reference).abs().max() < 2 * 2**-7 * reference.abs().max()
    assert x.grad.dtype == torch.bfloat16 and x.grad.is_contiguous(memory_format=torch.channels_last)
    assert (x.grad.double() - reference_x.grad).abs().max() < 2 * 2**-7 * reference_x.grad.abs().max()


def test_kernel_choice_never_runs_pytorchs_channels_last_norm_on_the_cpu():
    from gan_style.engine.kernels import choose_kernels

    for dtype in (torch.float32, torch.bfloat16):
        choice = choose_kernels("cpu", dtype)
        assert "channels_last/batchnorm" in choice.timings_ms and "channels_last/native" not in choice.timings_ms
        assert ("nchw/float32" in choice.timings_ms) == (dtype == torch.bfloat16)


def test_kernel_choice_on_the_stylegan2_probe_and_5d_weights():
    from gan_style.engine.kernels import PROBES, choose_kernels, to_channels_last
    from gan_style.methods.swapae import SwapAE

    assert SwapAE.kernel_probe == "stylegan2"
    from gan_style.nn.winograd import fused_winograd_available

    choice = choose_kernels("cpu", torch.float32, family="stylegan2")
    # its layers run Winograd too (gan_style.nn.layers.WinogradCapable): the convolution kernel is
    # measured, and where the fused transforms are built the layout is theirs, channels-last
    layouts = ({"channels_last/batchnorm"} | ({"channels_last/fused"} if fused_norm_available() else set())
               | (set() if fused_winograd_available() else {"nchw/native"}))
    assert set(choice.timings_ms) == layouts | {"direct 3x3 convolutions", "winograd 3x3 convolutions"}
    with pytest.raises(ValueError, match="kernel probe"):
        choose_kernels("cpu", torch.float32, family="vit")
    probe = PROBES["stylegan2"](3)
    to_channels_last(probe)  # Module.to(memory_format=channels_last) refuses its 5-D modulated weight
    weights = {name: p for name, p in probe.named_parameters() if p.dim() >= 4}
    assert any(p.dim() == 5 for p in weights.values())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights.values() if p.dim() == 4)
    assert all(p.is_contiguous() for p in weights.values() if p.dim() == 5)


@pytest.mark.parametrize("affine_shape", [(2, 5), (1, 5), (5,)])
def test_instance_norm_with_a_per_sample_affine_map(affine_shape):
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 6, 7, dtype=torch.float64) + 3).requires_grad_()
    scale = torch.rand(affine_shape, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(affine_shape, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 6, 7, dtype=torch.float64)

    def by_definition(x, scale, shift):
        broadcast = (lambda t: t.reshape(-1, 5, 1, 1)) if len(affine_shape) == 2 else (lambda t: t.reshape(5, 1, 1))
        return nn.InstanceNorm2d(5)(x) * broadcast(scale) + broadcast(shift)

    expected = by_definition(x, scale, shift)
    expected_grads = torch.autograd.grad(expected, (x, scale, shift), dy)
    for layout in (lambda t: t, _channels_last):
        y = instance_norm(layout(x), 1e-5, scale, shift)
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
        for grad, expected_grad in zip(torch.autograd.grad(y, (x, scale, shift), layout(dy)), expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    cl = _channels_last(x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, g, b: instance_norm(t, 1e-5, g, b), (cl, scale, shift))


@pytest.mark.parametrize("kernel", ["batchnorm", "reductions"])
@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_instance_norm_supports_a_double_backward(kernel, batch):
    # a gradient penalty (WGAN-GP, R1) through a discriminator with instance norms
    torch.manual_seed(0)
    x = torch.randn(batch, 4, 6, 5, dtype=torch.float64)
    norm = InstanceNorm2d(4)
    norm.kernel = kernel

    def penalty_gradient(inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.requires_grad_()
        (grad,) = torch.autograd.grad(norm(inputs).pow(3).sum(), inputs, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), inputs)[0]

    torch.testing.assert_close(penalty_gradient(_channels_last(x)), penalty_gradient(x.clone()), rtol=0, atol=1e-10)
    cl = _channels_last(x).requires_grad_()
    assert torch.autograd.gradgradcheck(norm, (cl,))


@pytest.mark.parametrize("running_stats", [False, True])
def test_affine_instance_norm_of_one_channels_last_sample(running_stats):
    # torch 2.14.1's CPU instance norm returns a wrong gradient for one channels-last sample with
    # a channels-last gradient (several units off here); ours goes around it
    torch.manual_seed(0)
    x = torch.randn(1, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, 6, 5, 7, dtype=torch.float64)
    norm = InstanceNorm2d(6, affine=True, track_running_stats=running_stats).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    reference = nn.InstanceNorm2d(6, affine=True, track_running_stats=running_stats).double()
    reference.load_state_dict(norm.state_dict())
    expected = reference(x)
    expected_grads = torch.autograd.grad(expected, (x, reference.weight, reference.bias), dy)
    y = norm(_channels_last(x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    for grad, expected_grad in zip(torch.autograd.grad(y, (x, norm.weight, norm.bias), _channels_last(dy)), expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["batchnorm", "fused"])
def test_bf16_instance_norm_gradient_with_a_large_common_mode(kernel):
    # the norm's gradient removes each channel's mean of dy; computed from uncentred bf16 terms
    # that cancellation lost the small remainder (CUT's PatchNCE loss drifted from fp32)
    torch.manual_seed(0)
    x = _channels_last(torch.randn(2, 8, 16, 16) * 2 + 30).bfloat16().requires_grad_()
    dy = _channels_last(torch.randn(2, 8, 16, 16) + 50).bfloat16()
    norm = InstanceNorm2d(8)
    norm.kernel = kernel
    norm(x).backward(dy)
    reference_x = x.detach().double().requires_grad_()
    nn.InstanceNorm2d(8)(reference_x).backward(dy.double())
    assert (x.grad.double() - reference_x.grad).abs().max() < 2 * 2**-7 * reference_x.grad.abs().max()


needs_fused_norm = pytest.mark.skipif(not fused_norm_available(), reason="no C compiler here (or GAN_STYLE_NATIVE=0)")


#: channel counts for the C kernels: 5 goes one channel at a time; 21, sixteen in vector lanes and 5 after
KERNEL_CHANNELS = [5, 21]


@needs_fused_norm
@pytest.mark.parametrize("channels", KERNEL_CHANNELS)
@pytest.mark.parametrize("affine", [None, "channel", "sample"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_kernel_is_instance_norm_with_its_gradients(dtype, batch, affine, channels):
    """Every sample of a channels-last batch in one C call, against float64 by definition: fp32
    to its rounding; bf16 within 2 units in the last place (its inputs are the bf16 values)."""
    generator = torch.Generator().manual_seed(0)
    x = _channels_last(torch.randn(batch, channels, 13, 11, generator=generator) * 3 + 2).to(dtype).requires_grad_()
    dy = _channels_last(torch.randn(batch, channels, 13, 11, generator=generator)).to(dtype)
    scale = None if affine is None else torch.rand(channels if affine == "channel" else (batch, channels), generator=generator).requires_grad_()
    shift = None if affine is None else torch.randn(scale.shape, generator=generator).requires_grad_()
    y = instance_norm(x, 1e-5, scale, shift, kernel="fused")
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert type(y.grad_fn).__name__ == "_FusedInstanceNormBackward"  # not another kernel's
    leaves = [t for t in (x, scale, shift) if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    reference_leaves = [t.detach().double().requires_grad_() for t in leaves]
    reference = instance_norm(reference_leaves[0].contiguous(), 1e-5, *reference_leaves[1:])  # NCHW group norm
    reference_grads = torch.autograd.grad(reference, reference_leaves, dy.double())
    relative = 1e-6 if dtype == torch.float32 else 2 * 2**-7
    assert (y.double() - reference).abs().max() <= relative * reference.abs().max()
    for grad, expected in zip(grads, reference_grads, strict=True):
        assert grad.dtype == (dtype if grad.shape == x.shape else torch.float32)
        assert (grad.double() - expected).abs().max() <= relative * expected.abs().max() * 4


@needs_fused_norm
def test_the_fused_kernel_is_accurate_when_the_mean_dwarfs_the_spread_and_has_a_double_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 32, 32) + 100
    expected = nn.InstanceNorm2d(64)(x.double())
    assert (instance_norm(_channels_last(x), kernel="fused").double() - expected).abs().max() < 1e-4
    # R1 through a discriminator's norms: the C backward hands a double backward to autograd
    norm = InstanceNorm2d(4)
    norm.kernel = "fused"
    small = torch.randn(2, 4, 6, 5)

    def penalty_gradient(inputs: torch.Tensor, module: nn.Module) -> torch.Tensor:
        inputs = inputs.requires_grad_()
        (grad,) = torch.autograd.grad(module(inputs).pow(3).sum(), inputs, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), inputs)[0]

    torch.testing.assert_close(penalty_gradient(_channels_last(small), norm).double(),
                               penalty_gradient(small.double(), nn.InstanceNorm2d(4)), rtol=1e-4, atol=1e-5)


@needs_fused_norm
def test_munits_adain_runs_by_the_norm_kernel_the_trainer_sets():
    from gan_style.engine.kernels import set_norm_kernel
    from gan_style.nn.munit_networks import AdaptiveInstanceNorm2d

    generator = torch.Generator().manual_seed(3)
    x = _channels_last(torch.randn(2, 6, 9, 8, generator=generator) + 1).requires_grad_()
    style = (torch.randn(2, 6, generator=generator), torch.rand(2, 6, generator=generator) + 0.5)
    adain = AdaptiveInstanceNorm2d(6)
    expected = adain(x, style)  # PyTorch's batch-norm kernel per sample, the default
    assert type(expected.grad_fn).__name__ != "_FusedInstanceNormBackward"
    set_norm_kernel(nn.Sequential(adain), "fused")
    y = adain(x, style)
    assert adain.kernel == "fused" and type(y.grad_fn).__name__ == "_FusedInstanceNormBackward"
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)


@needs_fused_norm
@pytest.mark.parametrize("channels", KERNEL_CHANNELS)
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_kernel_applies_the_activation_after_the_norm(dtype, slope, affine, channels):
    """instance_norm(..., activation_slope) in the C kernel: (leaky) ReLU of the norm in its output
    pass, the backward's mask recomputed from the statistics, against float64 by definition."""
    generator = torch.Generator().manual_seed(1)
    x = _channels_last(torch.randn(2, channels, 13, 11, generator=generator) * 3 + 2).to(dtype).requires_grad_()
    dy = _channels_last(torch.randn(2, channels, 13, 11, generator=generator)).to(dtype)
    scale = torch.rand(2, channels, generator=generator).requires_grad_() if affine else None
    shift = torch.randn(2, channels, generator=generator).requires_grad_() if affine else None
    y = instance_norm(x, 1e-5, scale, shift, kernel="fused", activation_slope=slope)
    assert type(y.grad_fn).__name__ == "_FusedInstanceNormBackward" and y.dtype == dtype
    leaves = [t for t in (x, scale, shift) if t is not None]
    grads = torch.autograd.grad(y, leaves, dy)
    reference_leaves = [t.detach().double().requires_grad_() for t in leaves]
    reference = torch.nn.functional.leaky_relu(instance_norm(reference_leaves[0].contiguous(), 1e-5, *reference_leaves[1:]), slope)
    reference_grads = torch.autograd.grad(reference, reference_leaves, dy.double())
    relative = 1e-6 if dtype == torch.float32 else 2 * 2**-7
    assert (y.double() - reference).abs().max() <= relative * reference.abs().max()
    assert (y < 0).any() == (slope > 0)  # the activation ran
    for grad, expected in zip(grads, reference_grads, strict=True):
        assert (grad.double() - expected).abs().max() <= relative * expected.abs().max() * 4
    # the other kernels apply it after the norm: the same function
    torch.testing.assert_close(instance_norm(x, 1e-5, scale, shift, kernel="batchnorm", activation_slope=slope), y,
                               rtol=0, atol=1e-5 if dtype == torch.float32 else 0.04)


@needs_fused_norm
def test_the_fused_activation_has_a_double_backward_and_keeps_nan_and_infinity():
    norm = InstanceNorm2d(4)
    norm.kernel, norm.activation_slope = "fused", 0.2
    small = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(2))

    def penalty_gradient(inputs: torch.Tensor, module: nn.Module) -> torch.Tensor:
        inputs = inputs.requires_grad_()
        (grad,) = torch.autograd.grad(module(inputs).pow(3).sum(), inputs, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), inputs)[0]

    reference = nn.Sequential(nn.InstanceNorm2d(4), nn.LeakyReLU(0.2))
    torch.testing.assert_close(penalty_gradient(_channels_last(small), norm).double(), penalty_gradient(small.double(), reference),
                               rtol=1e-4, atol=1e-5)
    # PyTorch's ReLU maps -inf to 0 and keeps NaN; the kernel's output pass does the same, over
    # more channels than one vector holds
    x = torch.zeros(1, 19, 2, 2)
    shift = torch.tensor([0.0, float("-inf"), 0.5]).repeat(7)[:19]
    x[0, ::3, 0, 0] = float("nan")
    y = instance_norm(_channels_last(x), 1e-5, shift=shift, kernel="fused", activation_slope=0.0)
    assert y[0, ::3].isnan().all()  # the whole channel's statistics are NaN
    assert torch.equal(y[0, 1::3], torch.zeros(6, 2, 2)) and torch.equal(y[0, 2::3], torch.full((6, 2, 2), 0.5))
    torch.testing.assert_close(instance_norm(_channels_last(x), 1e-5, shift=shift, activation_slope=0.0), y, equal_nan=True)


def _resnet_and_munit(channels_last: bool) -> list[nn.Module]:
    from gan_style.nn.discriminators import NLayerDiscriminator
    from gan_style.nn.generators import ResnetGenerator
    from gan_style.nn.munit_networks import MUNITGenerator, MUNITGeneratorSpec

    torch.manual_seed(0)
    networks = [ResnetGenerator(ngf=8, n_blocks=2, antialias=True, antialias_up=True), NLayerDiscriminator(ndf=8, n_layers=2),
                MUNITGenerator(MUNITGeneratorSpec(dim=8, mlp_dim=16, n_res=1))]
    if channels_last:
        from gan_style.engine.kernels import to_channels_last

        for net in networks:
            to_channels_last(net)
    return networks


@needs_fused_norm
@pytest.mark.parametrize("channels_last", [True, False])
def test_fusing_the_activations_into_the_norms_keeps_the_networks_function(channels_last):
    """fuse_norm_activations: each ReLU / LeakyReLU right after an instance norm or AdaIN (a
    Sequential's children, MUNIT's Conv2dBlock) is applied by the norm; the same outputs and
    gradients, the same parameters and state-dict keys; fused=False puts the modules back."""
    import copy

    from gan_style.engine.kernels import fuse_norm_activations, set_norm_kernel
    from gan_style.nn.layers import FusedActivation, MeasuredNorm

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    x = _channels_last(x) if channels_last else x
    for net, pairs in zip(_resnet_and_munit(channels_last), (7, 2, 5), strict=True):
        set_norm_kernel(net, "fused")
        separate = copy.deepcopy(net)
        assert fuse_norm_activations(net) == pairs and fuse_norm_activations(net) == 0  # once
        fused_norms = [m for m in net.modules() if isinstance(m, MeasuredNorm) and m.activation_slope is not None]
        assert len(fused_norms) == pairs == sum(isinstance(m, FusedActivation) for m in net.modules())
        assert list(net.state_dict()) == list(separate.state_dict())
        outputs, references = net(x.clone()), separate(x.clone())
        torch.testing.assert_close(outputs, references, rtol=0, atol=2e-6)
        grads = torch.autograd.grad(outputs.square().sum(), list(net.parameters()))
        reference_grads = torch.autograd.grad(references.square().sum(), list(separate.parameters()))
        for grad, expected in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
        assert fuse_norm_activations(net, fused=False) == pairs
        assert [type(m) for m in net.modules()] == [type(m) for m in separate.modules()]
        assert not any(isinstance(m, MeasuredNorm) and m.activation_slope is not None for m in net.modules())


def test_a_mixed_precision_step_casts_each_weight_once_per_version():
    """weight_casts: Conv2d layers under autocast take one bf16 copy of each weight until it changes
    (an optimiser step bumps its version); uses that need its gradient share the cast's node,
    others get it detached; the gradient is autocast's."""
    from gan_style.nn.layers import Conv2d, weight_casts

    torch.manual_seed(0)
    conv = Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)

    def twice() -> torch.Tensor:  # two uses in two autocast regions, as the trainer's forward and a phase
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            second = conv(first.float())
        return second.float().square().sum()

    (reference,) = torch.autograd.grad(twice(), conv.weight)
    with weight_casts(torch.bfloat16) as casts:
        (grad,) = torch.autograd.grad(twice(), conv.weight)
        assert {id(conv.weight), id(conv.bias)} == set(casts._casts)  # the layer took its casts from here
        kept = casts(conv.weight)
        assert kept is casts(conv.weight) and kept.dtype == torch.bfloat16 and kept.grad_fn is not None
        with torch.no_grad():
            assert casts(conv.weight).grad_fn is None and casts(conv.weight).data_ptr() == kept.data_ptr()
            conv.weight.add_(1.0)  # an optimiser step: a new version, a new cast
        renewed = casts(conv.weight)
        assert renewed is not kept and torch.equal(renewed, (conv.weight.detach()).bfloat16())
        assert casts(conv.bias.detach()) is not None
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, reference, rtol=2e-2, atol=1e-2 * reference.abs().max().item())
    # a use without a gradient keeps no cast of its own (autocast casts the weight for it)
    with weight_casts(torch.bfloat16) as casts:
        with torch.no_grad():
            assert casts(conv.weight) is conv.weight and not casts._casts
        assert casts(conv.weight).grad_fn is not None
    # outside the context, or without autocast, the layer is nn.Conv2d as it is
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
