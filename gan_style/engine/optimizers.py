"""Adam and AdamW that hand PyTorch's fused kernel channels-last parameters as the dense tensors
they are.

The trainer stores convolution weights channels-last (their activations are, and a convolution
would otherwise convert its weight on every call). PyTorch's fused CPU Adam takes only contiguous
tensors and copies every other parameter, gradient and moment to a contiguous one and back: a
CycleGAN generator's update took 14.6 ms instead of 8.0 (2 threads of a Xeon; docs/speed.md,
session n). A channels-last (O, I, kh, kw) tensor is dense, and its (O, kh, kw, I) permutation is
a contiguous view of the same memory; Adam is element-wise, so updating that view updates the
parameter. The state stays keyed by, and shaped like, the parameters (checkpoints unchanged).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def dense_view(t: Tensor) -> Tensor:
    """A contiguous view of ``t``'s memory where ``t`` is a channels-last 4-D tensor that is not
    contiguous; ``t`` itself otherwise."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1)
    return t


class _DenseViews:
    """Replaces the tensors ``torch.optim.Adam._init_group`` gathers for the update (parameters,
    gradients, first and second moments, AMSGrad's maxima) by their :func:`dense_view`. Each
    parameter's gradient and moments share its layout (PyTorch's gradient layout contract; the
    moments are created ``zeros_like`` it), so the views line up element for element."""

    def _init_group(self, group: dict[str, Any], *lists: Any) -> Any:
        gathered = lists[:5]  # params_with_grad, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs
        lengths = [len(tensors) for tensors in gathered]
        result = super()._init_group(group, *lists)  # type: ignore[misc]
        for tensors, start in zip(gathered, lengths, strict=True):
            tensors[start:] = [dense_view(t) for t in tensors[start:]]
        return result

    def step(self, closure: Any = None) -> Any:
        """The update; then the updated parameters' version counters move. PyTorch's fused kernel
        writes them in place without moving them, and both autograd's check of tensors saved for
        a backward and a bf16 step's kept weight casts (``gan_style.nn.layers.WeightCasts``) go by
        them: without it CUT's generator phase saw D's casts from before D's update (session p)."""
        loss = super().step(closure)  # type: ignore[misc]
        torch.autograd.graph.increment_version([p for group in self.param_groups for p in group["params"] if p.grad is not None])
        return loss


class Adam(_DenseViews, torch.optim.Adam):
    """``torch.optim.Adam`` whose update sees channels-last parameters as dense tensors."""


class AdamW(_DenseViews, torch.optim.AdamW):
    """``torch.optim.AdamW`` whose update sees channels-last parameters as dense tensors."""
