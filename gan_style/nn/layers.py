"""Normalisation factory and weight initialisation shared by every network.

The CycleGAN family builds its networks as flat ``nn.Sequential`` stacks of plain layers, so that
a layer's index is the same as in the reference implementations (CUT picks its PatchNCE features
by those indices, and checkpoints load both ways). The builders here return lists of layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("instance", "batch", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


class _PadsInItsInputDtype(nn.Module):
    """CPU autocast lists reflection and replication padding as fp32 ops: in a bf16 step each pad
    would cast its bf16 input to fp32 and the next convolution cast it back, two full-size copies
    per pad forward and two more in its backward.
    Padding only copies values, so it runs in its input's dtype here, outside autocast."""

    def forward(self, x: Tensor) -> Tensor:
        if _autocast_on(x):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x)
        return super().forward(x)


def _autocast_on(x: Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta tensors)
        return False


class ReflectionPad2d(_PadsInItsInputDtype, nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` in its input's dtype under autocast (see ``_PadsInItsInputDtype``)."""


class ReplicationPad2d(_PadsInItsInputDtype, nn.ReplicationPad2d):
    """``nn.ReplicationPad2d`` in its input's dtype under autocast (see ``_PadsInItsInputDtype``)."""


class InstanceNorm2d(nn.InstanceNorm2d):
    """Instance normalisation without affine parameters or running statistics (no state-dict
    keys), computed as group normalisation with one channel per group.

    The two are the same function (per sample and channel: biased variance, eps 1e-5), but on the
    CPU PyTorch's group-norm kernels keep channels-last tensors channels-last and are faster
    forward and backward, where instance norm returns a contiguous tensor that the next
    convolution must convert back (see README, "Speed").
    """

    #: how the norm runs, set by the trainer from a measurement (gan_style.engine.kernels):
    #: "float32" normalises bf16/fp16 inputs in fp32 and casts back; "contiguous" normalises a
    #: channels-last tensor in NCHW layout (PyTorch's CPU group-norm backward is several times
    #: slower on channels-last) and converts back; "native" calls the kernel as is. All three are
    #: the same function; fp32 results are unchanged.
    kernel: str = "float32"

    def forward(self, x: Tensor) -> Tensor:
        if self.affine or self.track_running_stats or x.dim() != 4:
            return super().forward(x)
        if self.kernel == "float32" and x.dtype in (torch.bfloat16, torch.float16):
            return F.group_norm(x.float(), x.shape[1], eps=self.eps).to(x.dtype)
        if self.kernel == "contiguous" and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return F.group_norm(x.contiguous(), x.shape[1], eps=self.eps).contiguous(memory_format=torch.channels_last)
        return F.group_norm(x, x.shape[1], eps=self.eps)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The per-channel normalisation named ``kind``.

    instance: InstanceNorm2d without affine parameters or running statistics (so it has no
    state-dict keys), biased variance, eps 1e-5 — the CycleGAN/CUT default.
    batch: BatchNorm2d with affine parameters and running statistics.
    none: identity (it still takes a slot in a Sequential, keeping layer indices stable).
    """
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def conv_bias_for(norm: str) -> bool:
    """Whether a conv followed by ``norm`` carries a bias, as in the reference implementations.

    Batch norm has its own shift, so the conv drops its bias. The reference decides this by
    checking for InstanceNorm, so with ``norm='none'`` the convs have no bias either — a quirk we
    keep so that its checkpoints load and parameter counts match.
    """
    return norm == "instance"


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv and linear weights (biases to 0) and batch-norm scales ~ N(1, gain).

    normal: N(0, gain) (CycleGAN, pix2pix); xavier: Glorot normal with ``gain`` (CUT);
    kaiming: He normal, fan-in; orthogonal: with ``gain``.
    """
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {', '.join(INIT_TYPES)}, got {init_type!r}")

    def init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(module.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(module.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)

    net.apply(init_module)
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


ActivationFactory = Callable[[], nn.Module]
