"""The fixed depthwise filters (CUT's antialiased sampling, StyleGAN2's blur) compute the same
function and gradients as autograd's depthwise convolution, keep nothing for the backward, and
have a double backward (R1 through a discriminator)."""

import pytest
import torch
import torch.nn.functional as F

from gan_style.nn import fixed_filter as fixed_filter_module
from gan_style.nn.antialias import Downsample, Upsample
from gan_style.nn.fixed_filter import fixed_filter
from gan_style.nn.stylegan2 import Blur

# (height, width, stride, padding, kernel): odd and even sizes, rows a strided filter leaves unread
CASES = [(10, 10, 2, 0, 3), (11, 10, 2, 0, 3), (9, 13, 2, 3, 4), (8, 8, 1, 1, 3), (7, 9, 2, 1, 4)]


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_fixed_filter_is_the_depthwise_convolution_with_its_gradients(case, transposed):
    height, width, stride, padding, k = case
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, height, width, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.rand(2, 1, k, k, dtype=torch.float64, generator=generator)
    plain = F.conv_transpose2d if transposed else F.conv2d

    def filtered(x):
        return fixed_filter(x, weight, stride, padding, transposed)

    assert torch.equal(filtered(x), plain(x, weight, stride=stride, padding=padding, groups=2))
    assert torch.autograd.gradcheck(filtered, (x,))
    assert torch.autograd.gradgradcheck(filtered, (x,))


def _saved_bytes(fn, x):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(saved)


def test_fixed_filter_keeps_nothing_for_its_backward():
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    weight = torch.rand(8, 1, 3, 3)
    assert _saved_bytes(lambda x: fixed_filter(x, weight, stride=2), x) == 0
    assert _saved_bytes(lambda x: F.conv2d(x, weight, stride=2, groups=8), x) > 0  # what autograd keeps


@pytest.mark.parametrize("module", [Downsample(4), Upsample(4), Blur([1, 3, 3, 1], (2, 1)), Blur([1, 3, 3, 1], (1, 1), upsample_factor=2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_filter_modules_have_autograds_gradients(module, channels_last, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 9, 12, generator=generator)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    filtered = getattr(module, "filtered", module)  # CUT's sampling by its filter, not gan_style.nn.resample
    y = filtered(x)
    dy = torch.randn(y.shape, generator=generator)
    (dx,) = torch.autograd.grad(y, x, dy)
    # the same module with autograd's own depthwise-convolution backward
    monkeypatch.setattr(fixed_filter_module._FixedFilter, "apply", lambda *args: fixed_filter_module._filter(*args))
    y_autograd = filtered(x)
    (dx_autograd,) = torch.autograd.grad(y_autograd, x, dy)
    assert torch.equal(y, y_autograd)
    torch.testing.assert_close(dx, dx_autograd, rtol=1e-5, atol=1e-6)
