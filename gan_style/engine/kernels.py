"""Memory format and normalisation kernels, chosen per device and step dtype by measuring them.

Which layout and which norm kernel are fastest depends on the dtype and the hardware, and the
differences are large: on an AVX-512/AMX Xeon, PyTorch's bf16 group norm (our instance norm) on a
channels-last tensor runs its backward about 15x slower than on a contiguous one, while in fp32
channels-last is as fast or faster. A fixed default is therefore wrong somewhere. Before training,
:func:`choose_kernels` times one representative layer (3x3 convolution, instance norm, ReLU,
forward and backward, at a generator's bottleneck width) in every candidate configuration and keeps
the fastest:

* memory format: contiguous (NCHW) or channels-last (NHWC);
* for a lower-precision step (bf16, fp16): the norm in the step's dtype, or its input cast to fp32
  (statistics and normalisation in fp32, the result cast back). The latter is also the numerically
  safer choice, so it wins ties.

fp32 steps keep the layout the user set (``train.channels_last``, default on) unless it is
``"auto"``; the choice is logged and ``gan-style bench`` reports it with the timings.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelChoice:
    """What :func:`choose_kernels` picked, and the milliseconds each candidate took."""

    channels_last: bool
    norm_in_float32: bool
    timings_ms: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "contiguous (NCHW)"
        norm = "fp32 norm statistics" if self.norm_in_float32 else "norm in the step dtype"
        return f"{layout}, {norm}"


def _candidate_name(channels_last: bool, norm_in_float32: bool) -> str:
    return f"{'channels_last' if channels_last else 'contiguous'}/{'norm_fp32' if norm_in_float32 else 'norm_native'}"


def _time_layer(device: torch.device, dtype: torch.dtype, channels_last: bool, norm_in_float32: bool,
                shape: tuple[int, int, int, int], repeats: int) -> float:
    """Median milliseconds of conv3x3 -> instance norm -> ReLU, forward and backward."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).contiguous(memory_format=memory_format).requires_grad_()
    weight = (torch.randn(shape[1], shape[1], 3, 3, generator=generator) / 24).to(device, dtype)
    weight = weight.contiguous(memory_format=memory_format).requires_grad_()

    def layer() -> None:
        y = F.conv2d(x, weight, padding=1)
        z = F.group_norm(y.float(), y.shape[1]).to(dtype) if norm_in_float32 else F.group_norm(y, y.shape[1])
        F.relu(z).sum().backward()

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
def _choose(device_type: str, device_index: int | None, dtype: torch.dtype, threads: int) -> KernelChoice:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    # a ResNet generator's bottleneck at 128 px (256 channels, 32x32), batch 2; larger on GPUs,
    # where a small layer would time the launch overhead rather than the kernels
    shape = (2, 256, 32, 32) if device.type == "cpu" else (8, 256, 64, 64)
    low_precision = dtype in (torch.bfloat16, torch.float16)
    candidates = [(cl, up) for cl in (False, True) for up in ((True, False) if low_precision else (True,))]
    timings = {_candidate_name(cl, up): _time_layer(device, dtype, cl, up, shape, repeats=3) for cl, up in candidates}
    # the fastest, preferring fp32 norms (safer numerics) and then the earlier candidate within 3 %
    best_time = min(timings.values())
    channels_last, norm_in_float32 = next((cl, up) for cl, up in sorted(candidates, key=lambda c: not c[1])
                                          if timings[_candidate_name(cl, up)] <= best_time * 1.03)
    return KernelChoice(channels_last, norm_in_float32, {k: round(v, 2) for k, v in timings.items()})


def choose_kernels(device: torch.device | str, dtype: torch.dtype) -> KernelChoice:
    """The fastest memory format and norm precision for ``dtype`` steps on ``device``, measured
    once per process (and thread count): about a second on a CPU."""
    device = torch.device(device)
    choice = _choose(device.type, device.index, dtype, torch.get_num_threads())
    logger.debug("kernels for %s on %s: %s (%s)", dtype, device, choice.describe(), choice.timings_ms)
    return choice


def set_norm_precision(network: nn.Module, norm_in_float32: bool) -> None:
    """Make every instance norm of ``network`` compute in fp32 (or in its input's dtype)."""
    from gan_style.nn.layers import InstanceNorm2d

    for module in network.modules():
        if isinstance(module, InstanceNorm2d):
            module.compute_in_float32 = norm_in_float32
