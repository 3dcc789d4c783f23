"""Winograd 3x3 convolutions (gan_style.nn.winograd): the same function as PyTorch's direct
convolution within their stated error, forward and backward, and chosen only where they apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_style.nn.layers import WINOGRAD_MIN_CHANNELS, Conv2d
from gan_style.nn.winograd import winograd_conv3x3

# largest error relative to the largest reference value, fp32 (F(2x2, 3x3) is as accurate as the
# direct convolution, ~1e-6; F(4x4, 3x3) with its points 0, 1, -1, 1/2, -2 ~3e-6)
TOLERANCE = {2: 3e-6, 4: 1e-5}


def _relative_errors(outputs, references):
    return [((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(outputs, references, strict=True)]


@pytest.mark.parametrize("output_tile", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("size", "padding", "bias"), [((18, 18), 0, True), ((16, 16), 1, True), ((13, 10), 1, True), ((9, 12), 1, False), ((3, 3), 0, True)])
def test_winograd_equals_the_direct_convolution_forward_and_backward(output_tile, channels_last, size, padding, bias):
    generator = torch.Generator().manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 24, *size, generator=generator).contiguous(memory_format=memory_format)
    weight = (torch.randn(20, 24, 3, 3, generator=generator) / 15).contiguous(memory_format=memory_format)
    b = torch.randn(20, generator=generator) if bias else None
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    b64 = b.double().requires_grad_() if bias else None
    reference = F.conv2d(x64, w64, b64, padding=padding)
    grad_out = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    leaves64 = [x64, w64] + ([b64] if bias else [])
    references = [reference, *torch.autograd.grad(reference, leaves64, grad_out)]

    leaves = [t.clone().requires_grad_() for t in [x, weight] + ([b] if bias else [])]
    out = winograd_conv3x3(leaves[0], leaves[1], leaves[2] if bias else None, padding, output_tile)
    grads = torch.autograd.grad(out, leaves, grad_out.float().contiguous(memory_format=memory_format))
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert max(_relative_errors([out, *grads], references)) < TOLERANCE[output_tile]
    # the layout is kept where the output is not cropped to a partial tile
    if channels_last and all((side + 2 * padding - 2) % output_tile == 0 for side in size):
        assert out.is_contiguous(memory_format=torch.channels_last)
    # the weight's gradient comes in the weight's layout (no copy when it is accumulated)
    assert grads[1].is_contiguous(memory_format=memory_format)


def test_winograd_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="3x3"):
        winograd_conv3x3(torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 5, 5))
    with pytest.raises(ValueError, match="output_tile"):
        winograd_conv3x3(torch.zeros(1, 2, 8, 8), torch.zeros(2, 2, 3, 3), output_tile=3)
    # a gradient penalty through the layer would need a double backward: refused, not silently wrong
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(winograd_conv3x3(x, torch.randn(4, 4, 3, 3)).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|twice"):
        grad.sum().backward()


def _ran_winograd(module: torch.nn.Module, x: torch.Tensor) -> bool:
    return type(module(x).grad_fn).__name__ == "_WinogradConv3x3Backward"


def test_conv2d_runs_winograd_only_where_it_applies():
    wide = WINOGRAD_MIN_CHANNELS
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
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 step's convolutions run directly in bf16
        assert conv(x).dtype == torch.bfloat16
    assert not _ran_winograd(conv.double(), x.double())


def test_kernel_choice_of_the_convolutions():
    from gan_style.engine.kernels import choose_kernels

    forced = choose_kernels("cpu", torch.float32, winograd=True)
    assert forced.conv_kernel == "winograd" and "winograd 3x3 convolutions" in forced.describe()
    assert choose_kernels("cpu", torch.float32, winograd=False).conv_kernel == "direct"
    measured = choose_kernels("cpu", torch.float32)
    assert {"direct 3x3 convolutions", "winograd 3x3 convolutions"} <= set(measured.timings_ms)
    assert choose_kernels("cpu", torch.bfloat16, winograd=True).conv_kernel == "direct"
    assert choose_kernels("cpu", torch.float32, family="stylegan2", winograd=True).conv_kernel == "direct"


def test_a_winograd_training_step_matches_the_direct_one():
    from gan_style.config import ConfigError
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method

    cls = get_method("cyclegan")
    results = {}
    for winograd in (False, True):
        # ngf 32: 128-channel residual blocks, wide enough for Winograd
        settings = {"train.winograd": winograd, "train.channels_last": True, "ngf": 32, "ndf": 8, "netG": "resnet_6blocks",
                    "data.crop_size": 32, "data.load_size": 32}
        trainer = Trainer(cls(config_from_overrides(cls, None, settings)), show_progress=False)
        convs = [m for net in trainer.networks.values() for m in net.modules() if isinstance(m, Conv2d)]
        assert len(convs) == 2 * 6 * 2 and {m.kernel for m in convs} == {"winograd" if winograd else "direct"}
        batches = torch.Generator().manual_seed(0)
        results[winograd] = [{k: float(v) for k, v in trainer.train_step(trainer.method.synthetic_batch(32, 1, batches)).items()}
                             for _ in range(2)]
    # the first step's losses come from the same weights; the second's from weights one Adam step
    # on, where a gradient near zero may have changed sign (a 2 x lr difference in that weight)
    for step, tolerance in ((0, 1e-4), (1, 1e-3)):
        direct, winograd = results[False][step], results[True][step]
        assert direct.keys() == winograd.keys()
        for key, value in direct.items():
            assert winograd[key] == pytest.approx(value, rel=tolerance, abs=1e-6), (step, key)
    with pytest.raises(ConfigError, match="winograd"):
        config_from_overrides(cls, None, {"train.winograd": "sometimes"})
