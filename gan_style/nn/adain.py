"""Adaptive instance normalisation, the one implementation shared by the AdaIN style-transfer
layer and MUNIT's decoder.

Huang and Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization"
(ICCV 2017), Eq. 8:

    AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y),

with mu, sigma per sample and channel over the spatial positions. AdaIN takes sigma(y), mu(y)
from a style feature map; MUNIT (Huang, Liu, Belongie and Kautz, ECCV 2018, implementation details, "Decoder")
uses the same layer in its residual blocks but gets the scale gamma and shift beta from an MLP of
the style code, AdaIN(z, gamma, beta) = gamma * (z - mu(z)) / sigma(z) + beta.

The two reference codes normalise slightly differently, so the statistics are an option:
AdaIN's uses the unbiased variance (divides by H*W - 1), MUNIT's is instance normalisation
(biased variance); both add ``eps`` to the variance before the square root.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from gan_style.nn.layers import activate, instance_norm

__all__ = ["adaptive_instance_norm", "instance_mean_std"]


def instance_mean_std(x: Tensor, eps: float = 1e-5, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and sqrt(variance + eps) of ``x`` (B, C, H, W) over its
    positions, each (B, C, 1, 1). Computed in at least float32 (squares overflow float16)."""
    flat = rearrange(x.to(torch.promote_types(x.dtype, torch.float32)), "b c h w -> b c (h w)")
    var, mean = torch.var_mean(flat, dim=2, correction=int(unbiased))
    return rearrange(mean, "b c -> b c 1 1"), rearrange((var + eps).sqrt(), "b c -> b c 1 1")


def adaptive_instance_norm(content: Tensor, style: Tensor | tuple[Tensor, Tensor], eps: float = 1e-5, unbiased: bool = True,
                           kernel: str = "batchnorm", activation_slope: float | None = None) -> Tensor:
    """AdaIN (Eq. 8 of Huang and Belongie): normalise each channel of ``content`` (B, C, H, W) to
    zero mean and unit std over its positions, then shift and scale it by the style's.

    ``style`` is either a feature map (B or 1, C, h, w; any spatial size) whose channel means and
    stds are taken (the AdaIN paper), or the pair ``(mean, std)`` itself, each (B, C) or
    (B, C, 1, 1) (MUNIT: beta and gamma from the MLP, ``unbiased=False``).

    The defaults are the AdaIN reference's ``calc_mean_std`` (unbiased variance, ``eps`` added to
    it), equal to :func:`gan_style.losses.perceptual.channel_mean_std`; with ``eps=0`` the output
    has exactly the style's channel means and stds. ``unbiased=False`` is instance normalisation
    (MUNIT's ``AdaptiveInstanceNorm2d``), run by the channels-last norm ``kernel``
    (``gan_style.nn.layers.instance_norm``), which also applies a (leaky) ReLU of negative slope
    ``activation_slope`` after it where given (MUNIT's decoder: AdaIN then ReLU).
    """
    if not unbiased and not isinstance(style, Tensor):  # instance norm with a per-sample affine map
        mean, std = (s.reshape(*s.shape[:2]) for s in style)
        return instance_norm(content, eps, scale=std, shift=mean, kernel=kernel, activation_slope=activation_slope)
    content_mean, content_std = instance_mean_std(content, eps, unbiased)
    if isinstance(style, Tensor):
        style_mean, style_std = instance_mean_std(style, eps, unbiased)
    else:
        style_mean, style_std = (s.reshape(*s.shape[:2], 1, 1) for s in style)
    return activate((content - content_mean) / content_std * style_std + style_mean, activation_slope)
