"""Feature-space losses: content, Gram style, mean/std style, total variation, perceptual.

Used by Gatys et al. (CVPR 2016) and AdaIN (Huang and Belongie, ICCV 2017) in
``gan_style.methods.nst``, by MUNIT's perceptual loss, and by the evaluation metrics (content and
style distances). The features come from :class:`gan_style.nn.vgg.VGG19Features` (or AdaIN's
encoder); nothing here loads weights.

Conventions. ``features`` are (B, C, H, W) activations; every loss returns a scalar averaged over
the batch, so a batch of B images gives the mean of the B single-image losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gan_style.nn.layers import instance_norm
from gan_style.nn.vgg import VGG19Features

__all__ = [
    "PerceptualLoss",
    "channel_mean_std",
    "content_loss",
    "gram_matrix",
    "mean_std_style_loss",
    "style_loss",
    "total_variation_loss",
]


def gram_matrix(features: Tensor) -> Tensor:
    """Gram matrix of each feature map, normalised by the number of elements of the map.

    ``G[b, i, j] = sum_k F[b, i, k] F[b, j, k] / (C H W)`` with ``F`` the (C, H*W) matrix of the
    map: Gatys et al., Eq. 3, with the normalisation of neural-style (J. Johnson), which divides
    by ``input:nElement()`` = C*H*W. The paper's Eq. 4 instead puts 1 / (4 N^2 M^2) in the loss;
    dividing G by C*H*W keeps the loss independent of the image size, so that the same style
    weight works at 256 and 512 px and for style images of another size than the output.
    Returns (B, C, C), in float32.
    """
    _, channels, height, width = features.shape
    # In float32 even under mixed precision: sums of H*W squared activations overflow float16.
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = rearrange(features.float(), "b c h w -> b c (h w)")
        return torch.bmm(flat, flat.transpose(1, 2)) / (channels * height * width)


def content_loss(features: Tensor, target: Tensor) -> Tensor:
    """Gatys et al., Eq. 1, as a mean: ``mean((F - P)^2)`` over all elements (neural-style's
    MSECriterion; the paper's 1/2 sum differs only by a constant absorbed in the weight)."""
    return F.mse_loss(features, target)


def style_loss(features: Tensor, target_gram: Tensor) -> Tensor:
    """One layer's style term (Gatys et al., Eq. 4): ``mean((G(F) - A)^2)`` over the C x C
    entries, with :func:`gram_matrix`'s normalisation. ``target_gram`` is (B, C, C) or (1, C, C)
    (one style for the whole batch)."""
    gram = gram_matrix(features)
    return F.mse_loss(gram, target_gram.expand_as(gram))


def channel_mean_std(features: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation over the spatial positions, each
    (B, C, 1, 1) (Huang and Belongie, Eqs. 5 and 6).

    As in the AdaIN reference code the variance is the unbiased one (divides by H*W - 1) and
    ``eps`` is added to it before the square root, so a constant channel gets std sqrt(eps)
    instead of 0 (no division by zero in AdaIN). Computed and returned in float32.
    """
    flat = rearrange(features.float(), "b c h w -> b c (h w)")  # float32: squares overflow float16
    mean = flat.mean(dim=2)
    std = (flat.var(dim=2) + eps).sqrt()
    return rearrange(mean, "b c -> b c 1 1"), rearrange(std, "b c -> b c 1 1")


def mean_std_style_loss(features: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """AdaIN's style loss for one layer (Huang and Belongie, Eq. 13): the distance between the
    channel means plus the distance between the channel stds of the two feature maps, each as a
    mean squared error (the reference code's MSELoss; Eq. 13 writes L2 norms)."""
    mean, std = channel_mean_std(features, eps)
    target_mean, target_std = channel_mean_std(target, eps)
    return F.mse_loss(mean, target_mean) + F.mse_loss(std, target_std)


def total_variation_loss(image: Tensor, power: float = 2.0) -> Tensor:
    """Total variation: the sum over pixels and channels of ``|x[i+1, j] - x[i, j]|^power +
    |x[i, j+1] - x[i, j]|^power``, averaged over the batch.

    ``power=2`` is the smoothness prior neural-style optimises (its TVLoss back-propagates the
    gradient of 1/2 of this sum, so neural-style's TV term is ``tv_weight / 2 * total_variation_loss``
    on 0-255 pixels); ``power=1`` is the anisotropic TV norm (neural-style-pt).
    """
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    if power == 2.0:
        total = dy.square().sum() + dx.square().sum()
    else:
        total = dy.abs().pow(power).sum() + dx.abs().pow(power).sum()
    return total / image.shape[0]


class PerceptualLoss(nn.Module):
    """Weighted distance between the VGG-19 features of two images (Johnson et al., 2016, the
    "feature reconstruction loss"; MUNIT's perceptual loss).

    ``loss(x, y) = sum_l weight_l * distance(phi_l(x), phi_l(y))`` for ``l`` in ``layers``.

    * ``criterion``: ``"mse"`` (default) or ``"l1"``, averaged over the elements;
    * ``normalize_features``: instance-normalise each feature map first (no affine parameters),
      as MUNIT does with its VGG features, so only the spatial structure is compared;
    * ``gram``: compare Gram matrices instead (a style distance, Gatys et al.);
    * ``detach_target``: no gradient through ``y``'s features (the usual case: ``y`` is a target).

    ``vgg`` is shared, not owned: it should be frozen (``load_vgg19`` returns it so). Its
    ``input_range`` decides the image range this loss expects.
    """

    def __init__(
        self,
        vgg: VGG19Features,
        layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
        weights: Sequence[float] | None = None,
        criterion: Literal["mse", "l1"] = "mse",
        normalize_features: bool = False,
        gram: bool = False,
        detach_target: bool = True,
    ) -> None:
        super().__init__()
        if weights is None:
            weights = [1.0] * len(layers)
        if len(weights) != len(layers):
            raise ValueError(f"got {len(weights)} weights for {len(layers)} layers")
        if criterion not in ("mse", "l1"):
            raise ValueError(f"criterion must be 'mse' or 'l1', got {criterion!r}")
        self.vgg = vgg
        self.layer_weights: dict[str, float] = dict(zip(layers, (float(w) for w in weights)))
        self.criterion = criterion
        self.normalize_features = normalize_features
        self.gram = gram
        self.detach_target = detach_target

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        if self.normalize_features:
            a, b = instance_norm(a), instance_norm(b)
        if self.gram:
            a, b = gram_matrix(a), gram_matrix(b)
        return F.mse_loss(a, b) if self.criterion == "mse" else F.l1_loss(a, b)

    def layer_losses(self, image: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The unweighted distance of each layer."""
        layers = list(self.layer_weights)
        features = self.vgg(image, layers)
        if self.detach_target:
            with torch.no_grad():
                target_features = self.vgg(target, layers)
        else:
            target_features = self.vgg(target, layers)
        return {name: self._distance(features[name], target_features[name]) for name in layers}

    def forward(self, image: Tensor, target: Tensor) -> Tensor:
        losses: Mapping[str, Tensor] = self.layer_losses(image, target)
        return sum(self.layer_weights[name] * value for name, value in losses.items())  # type: ignore[return-value]
