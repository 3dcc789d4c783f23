"""Anti-aliased down- and up-sampling (Zhang, "Making convolutional networks shift-invariant
again", ICML 2019), as CUT uses them in its generator and discriminator.

The binomial filters are registered buffers named ``filt`` (one copy per channel), because the
reference checkpoints contain them; they are constants, so the filters' backward is their adjoint
(``gan_style.nn.fixed_filter``). A channels-last fp32 or bf16 CPU image is resampled by the same
operators in one C pass instead (``gan_style.nn.resample``: pad, filter and stride together, in the
image's dtype, no fp32 copies in a bf16 step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_style.nn.fixed_filter import fixed_filter
from gan_style.nn.resample import resample, resample_applies


def _in_float32(filter_fn):
    """Run a fixed depthwise filter in fp32 when the input is bf16/fp16 and cast back: oneDNN's
    low-precision depthwise convolutions are slow on CPUs (2x the fp32 time measured on an
    AVX-512/AMX Xeon), and a fixed blur gains nothing from lower precision. In CUT's bf16 step
    this took 0.98 s to 0.78 s (NCHW) and 0.86 s to 0.72 s (channels-last)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(x.device.type, enabled=False):
                return filter_fn(self, x.float()).to(x.dtype)
        return filter_fn(self, x)

    forward.__doc__ = filter_fn.__doc__
    return forward


def _binomial_filter(taps: list[float], channels: int, scale: float) -> Tensor:
    row = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(row, row)
    kernel = kernel / kernel.sum() * scale
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


class Downsample(nn.Module):
    """Blur with outer([1, 2, 1]) / 16, then keep every second pixel (reflect padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("filt", _binomial_filter([1.0, 2.0, 1.0], channels, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        if resample_applies(x):
            return resample(x, "blur_down")
        return self.filtered(x)

    @_in_float32
    def filtered(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return fixed_filter(x, self.filt, stride=2)


class Upsample(nn.Module):
    """Zero-insertion x2 upsampling with outer([1, 3, 3, 1]) / 64 * 4 (replicate padding). The
    reference's transposed conv (padding 2) gives 2H + 2 rows and drops the first and the last;
    padding 3 drops them inside the convolution, so the output is a contiguous tensor, not a
    cropped view (that the next convolution would copy, slowly, in bf16)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("filt", _binomial_filter([1.0, 3.0, 3.0, 1.0], channels, 4.0))

    def forward(self, x: Tensor) -> Tensor:
        if resample_applies(x):
            return resample(x, "bilinear_up")
        return self.filtered(x)

    @_in_float32
    def filtered(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return fixed_filter(x, self.filt, stride=2, padding=3, transposed=True)
