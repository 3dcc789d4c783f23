"""Adversarial objectives and discriminator regularisers.

``gan_loss(prediction, target_is_real, mode)`` covers the objectives of the methods in this
suite: least squares (LSGAN, Mao et al. 2017: CycleGAN, CUT, MUNIT), the original cross-entropy
("vanilla"), its non-saturating generator form (StyleGAN2, SinCUT, SwapAE), hinge, and WGAN-GP's
critic loss. Predictions may be a tensor or a list of tensors (multi-scale discriminators: the
losses are summed over scales).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, autograd

GAN_MODES = ("lsgan", "vanilla", "nonsaturating", "hinge", "wgangp")


def gan_loss(prediction: Tensor | Sequence[Tensor], target_is_real: bool, mode: str, for_discriminator: bool = True) -> Tensor:
    """The loss for ``prediction`` when it should be judged real (or fake).

    For the generator call it with ``target_is_real=True`` and ``for_discriminator=False``: only
    hinge distinguishes the two players (the generator minimises -D(G(z))).
    """
    if isinstance(prediction, (list, tuple)):
        return sum(gan_loss(p, target_is_real, mode, for_discriminator) for p in prediction)
    prediction = prediction.float()  # in a bf16/fp16 step the loss is still accumulated in fp32
    if mode == "lsgan":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.mse_loss(prediction, target)
    if mode == "vanilla":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if mode == "nonsaturating":
        # -log sigmoid(x) for real, -log(1 - sigmoid(x)) = softplus(x) for fake.
        return F.softplus(-prediction).mean() if target_is_real else F.softplus(prediction).mean()
    if mode == "hinge":
        if not for_discriminator:
            return -prediction.mean()
        return F.relu(1 - prediction).mean() if target_is_real else F.relu(1 + prediction).mean()
    if mode == "wgangp":
        return -prediction.mean() if target_is_real else prediction.mean()
    raise ValueError(f"gan_mode must be one of {', '.join(GAN_MODES)}, got {mode!r}")


def gradient_penalty(discriminator, real: Tensor, fake: Tensor, constant: float = 1.0, weight: float = 10.0, generator: torch.Generator | None = None) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): weight * E[(||grad D(x_hat)||_2 - constant)^2] on
    random interpolates x_hat between real and fake images."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, generator=generator, dtype=real.dtype)
    interpolates = (alpha * real + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = discriminator(interpolates)
    outputs = out if isinstance(out, (list, tuple)) else [out]
    grads = autograd.grad([o.sum() for o in outputs], interpolates, create_graph=True)[0]
    grads = grads.flatten(1)
    return weight * ((grads.norm(2, dim=1) - constant) ** 2).mean()


def r1_penalty(real_prediction: Tensor, real_images: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] on real images (which must require grad).
    The caller multiplies by gamma / 2 and, for lazy regularisation, by the interval."""
    (grads,) = autograd.grad(real_prediction.sum(), real_images, create_graph=True)
    return grads.float().pow(2).flatten(1).sum(1).mean()  # fp32 sum of squares in bf16/fp16 steps
