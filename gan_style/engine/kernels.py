"""Memory format and normalisation kernels, chosen per device and step dtype by measuring them.

Which layout and which norm kernel are fastest depends on the dtype and the hardware, and the
differences are large: on an AVX-512/AMX Xeon, PyTorch's bf16 group norm (our instance norm) on a
channels-last tensor runs its backward about 15x slower than on a contiguous one, while in fp32
channels-last is as fast or faster. A fixed default is therefore wrong somewhere. Before training,
:func:`choose_kernels` times one representative layer (3x3 convolution, instance norm, ReLU,
forward and backward, at a generator's bottleneck width) in every candidate configuration and keeps
the fastest:

* memory format: contiguous (NCHW) or channels-last (NHWC);
* the norm kernel: as is ("native"); for a lower-precision step (bf16, fp16) its input cast to
  fp32 and the result cast back ("float32", numerically the safest, so it wins ties); for
  channels-last tensors a detour through NCHW ("contiguous"), since PyTorch's CPU group-norm
  backward is several times slower on channels-last. PyTorch's bf16 norm kernels accumulate their
  statistics in fp32 either way.

``train.channels_last`` true/false fixes the layout (the norm kernel is still measured);
``"auto"`` (the default) measures both. The choice is logged and
``gan-style bench`` reports it with the timings.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gan_style.nn.layers import InstanceNorm2d, pad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelChoice:
    """What :func:`choose_kernels` picked, and the milliseconds each candidate took."""

    channels_last: bool
    norm_kernel: str  # see gan_style.nn.layers.InstanceNorm2d.kernel
    timings_ms: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "contiguous (NCHW)"
        return f"{layout}, {self.norm_kernel} instance norm"


def _candidate_name(channels_last: bool, norm_kernel: str) -> str:
    return f"{'channels_last' if channels_last else 'nchw'}/{norm_kernel}"


def _time_layer(device: torch.device, dtype: torch.dtype, channels_last: bool, norm_kernel: str,
                shape: tuple[int, int, int, int], repeats: int) -> float:
    """Median milliseconds of a generator's layer pattern, forward and backward."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).contiguous(memory_format=memory_format).requires_grad_()
    weight = (torch.randn(shape[1], shape[1], 3, 3, generator=generator) / 24).to(device, dtype)
    weight = weight.contiguous(memory_format=memory_format).requires_grad_()

    norm = InstanceNorm2d(shape[1])
    norm.kernel = norm_kernel

    up_weight = (torch.randn(shape[1], shape[1] // 2, 3, 3, generator=generator) / 24).to(device, dtype).requires_grad_()

    def layer() -> None:
        # a generator's pattern: reflection padding, conv, norm, ReLU, then a transposed conv
        # (the decoder's up-sampling) and its norm
        y = F.relu(norm(F.conv2d(pad(x, (1, 1, 1, 1), "reflect"), weight)))
        up = F.conv_transpose2d(y, up_weight, stride=2, padding=1, output_padding=1)
        F.relu(norm(up)).sum().backward()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    layer()  # warm-up: first-call allocations and kernel selection
    timings = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        layer()
        synchronize()
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2] * 1000


@functools.cache
def _choose(device_type: str, device_index: int | None, dtype: torch.dtype, threads: int, layout: bool | None) -> KernelChoice:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    # a ResNet generator's first and bottleneck layers at 128 px (64 channels at 128x128, 256 at
    # 32x32), batch 1; larger on GPUs, where a small layer would time the launch overhead
    shapes = [(1, 64, 128, 128), (1, 256, 32, 32)] if device.type == "cpu" else [(8, 64, 256, 256), (8, 256, 64, 64)]
    low_precision = dtype in (torch.bfloat16, torch.float16)
    layouts = (False, True) if layout is None else (layout,)
    # in preference order: within 3 % of the fastest, the earlier one wins
    candidates = [(cl, kernel) for cl in layouts for kernel in ("float32", "native", "contiguous")
                  if (low_precision or kernel != "float32") and (cl or kernel != "contiguous")]
    timings = {
        _candidate_name(cl, kernel): sum(_time_layer(device, dtype, cl, kernel, shape, repeats=5) for shape in shapes)
        for cl, kernel in candidates
    }
    best_time = min(timings.values())
    order = sorted(candidates, key=lambda c: ("float32", "native", "contiguous").index(c[1]))
    channels_last, norm_kernel = next(c for c in order if timings[_candidate_name(*c)] <= best_time * 1.03)
    return KernelChoice(channels_last, norm_kernel, {k: round(v, 2) for k, v in timings.items()})


def choose_kernels(device: torch.device | str, dtype: torch.dtype, channels_last: bool | None = None) -> KernelChoice:
    """The fastest memory format (``channels_last=None``; or the one given) and norm precision for
    ``dtype`` steps on ``device``, measured once per process (and thread count): under a second
    on a CPU."""
    device = torch.device(device)
    choice = _choose(device.type, device.index, dtype, torch.get_num_threads(), channels_last)
    logger.debug("kernels for %s on %s: %s (%s)", dtype, device, choice.describe(), choice.timings_ms)
    return choice


def set_norm_kernel(network: nn.Module, kernel: str) -> None:
    """Make every instance norm of ``network`` run as ``kernel`` (see :class:`KernelChoice`)."""
    for module in network.modules():
        if isinstance(module, InstanceNorm2d):
            module.kernel = kernel
