"""Shared layers (gan_style.nn.layers): padding in the input's dtype under autocast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_style.nn.layers import ReflectionPad2d, ReplicationPad2d


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
