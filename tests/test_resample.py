"""CUT's antialiased sampling and the reflection pads' backward by separable resampling in C
(gan_style.nn.resample): the same function and gradients as PyTorch's pads and the modules'
filter path, in fp32 and bf16, with a double backward; used exactly where it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_style.nn import resample as resample_module
from gan_style.nn.antialias import Downsample, Upsample
from gan_style.nn.layers import ReflectionPad2d
from gan_style.nn.resample import operator_matrix, resample, resample_applies, resample_kernels_available

pytestmark = pytest.mark.skipif(not resample_kernels_available(), reason="no C compiler here (or GAN_STYLE_NATIVE=0)")

MODULES = {"blur_down": Downsample, "bilinear_up": Upsample}
# (N, C, H, W): odd and even sides, the smallest a reflection allows, a CUT-sized map; channels
# below, at and above the kernel's blocks of 16
SHAPES = [(2, 5, 9, 7), (1, 3, 2, 2), (2, 16, 31, 33), (1, 21, 6, 10), (1, 64, 64, 64)]


def _channels_last(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_it_is_the_modules_filter_with_its_gradient(name, shape, dtype):
    generator = torch.Generator().manual_seed(0)
    module = MODULES[name](shape[1]).double()
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    x_filter = x.clone().requires_grad_()
    expected = module.filtered(x_filter)
    dy = torch.randn(expected.shape, dtype=torch.float64, generator=generator)
    (expected_dx,) = torch.autograd.grad(expected, x_filter, dy)

    x_c = _channels_last(x, dtype)
    y = resample(x_c, name)
    (dx,) = torch.autograd.grad(y, x_c, _channels_last(dy, dtype))
    assert y.dtype == dtype and y.shape == expected.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=torch.channels_last)
    # fp32: the sums' rounding; bf16: the input's (2^-9 of |x| <= 5) and the result's (2^-9 of it)
    tolerance = 1e-6 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=tolerance)
    torch.testing.assert_close(dx.double(), expected_dx, rtol=0, atol=2 * tolerance)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_its_backward_is_the_adjoint_and_differentiable_again(name):
    """<A x, g> = <x, Aᵀ g>; R1 differentiates the input gradient again (create_graph)."""
    generator = torch.Generator().manual_seed(1)
    module = MODULES[name](3)
    x = torch.randn(2, 3, 11, 8, generator=generator).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = resample(x, name)
    g = torch.randn(y.shape, generator=generator).contiguous(memory_format=torch.channels_last).requires_grad_()
    (dx,) = torch.autograd.grad(y, x, g, create_graph=True)
    torch.testing.assert_close((y * g).sum(), (x * dx).sum(), rtol=1e-5, atol=0)
    # d/dg of |Aᵀ g|² is 2 A Aᵀ g, the same through the module's filter path
    (twice,) = torch.autograd.grad((dx**2).sum(), g)
    x_filter = x.detach().contiguous().requires_grad_()
    g_filter = g.detach().contiguous().requires_grad_()
    (dx_filter,) = torch.autograd.grad(module.filtered(x_filter), x_filter, g_filter, create_graph=True)
    (twice_filter,) = torch.autograd.grad((dx_filter**2).sum(), g_filter)
    torch.testing.assert_close(twice, twice_filter, rtol=1e-5, atol=1e-6)


def test_the_operators_are_the_papers_filters():
    """blur_down: [1, 2, 1] / 4 at even pixels, reflected; bilinear_up: 3/4 and 1/4, replicated."""
    blur = operator_matrix("blur_down", 5)
    assert blur.tolist() == [[0.5, 0.5, 0, 0, 0], [0, 0.25, 0.5, 0.25, 0], [0, 0, 0, 0.5, 0.5]]
    up = operator_matrix("bilinear_up", 3)
    assert up[0].tolist() == [1.0, 0, 0] and up[3].tolist() == [0, 0.75, 0.25] and up[5].tolist() == [0, 0, 1.0]
    assert torch.equal(up.sum(1), torch.ones(6)) and torch.equal(blur.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="at least 2"):
        operator_matrix("blur_down", 1)


def test_it_applies_to_channels_last_fp32_and_bf16_cpu_images_only(monkeypatch):
    image = torch.randn(1, 8, 6, 6)
    assert resample_applies(image.contiguous(memory_format=torch.channels_last))
    assert resample_applies(image.bfloat16().contiguous(memory_format=torch.channels_last))
    assert not resample_applies(image)  # NCHW: the filter path, no layout copies
    assert not resample_applies(image.half().contiguous(memory_format=torch.channels_last))
    assert not resample_applies(image.to("meta").contiguous(memory_format=torch.channels_last))
    calls = []
    monkeypatch.setattr(resample_module._Resample, "apply", lambda *args: calls.append(args[1][0]) or args[0])
    Downsample(8)(image.contiguous(memory_format=torch.channels_last))
    Upsample(8)(image.contiguous(memory_format=torch.channels_last))
    Downsample(8)(image)
    assert calls == ["blur_down", "bilinear_up"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reflection_padding_keeps_pytorchs_forward_and_gathers_its_gradient(dtype):
    """ReflectionPad2d on a channels-last image: PyTorch's values, in the input's dtype under a
    bf16 autocast; its gradient by the adjoint's gather, the sums rounded once; twice differentiable."""
    generator = torch.Generator().manual_seed(2)
    pad = ReflectionPad2d((3, 1, 2, 0))
    x = torch.randn(2, 16, 9, 6, generator=generator)
    x_c = _channels_last(x, dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pad(x_c)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, F.pad(x_c.detach(), (3, 1, 2, 0), mode="reflect"))
    dy = torch.randn(y.shape, generator=generator)
    (dx,) = torch.autograd.grad(y, x_c, _channels_last(dy, dtype), create_graph=True)
    x64 = x.double().requires_grad_()
    (expected,) = torch.autograd.grad(F.pad(x64, (3, 1, 2, 0), mode="reflect"), x64, dy.to(dtype).double())
    torch.testing.assert_close(dx.double(), expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 2e-2)
    assert dx.requires_grad  # the gather is differentiable again
