"""LPIPS (Zhang et al., CVPR 2018), VGG-16 variant, on the project's VGG-16 loader.

``d(x, x0) = sum_l 1 / (H_l W_l) sum_{h,w} || w_l * (y_l[h, w] - y0_l[h, w]) ||^2``  (Eq. 1)

with ``y_l`` the VGG-16 activations at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each unit-
normalised along the channels, and ``w_l`` the learned non-negative per-channel weights ("lin"
layers, version 0.1). The reference's input scaling (shift [-.030, -.088, -.188], scale [.458,
.448, .450] on images in [-1, 1]) is exactly the ImageNet normalisation that
:class:`gan_style.nn.vgg.VGG16Features` applies with ``input_range=(-1, 1)``.

Two files, both read from disk, never downloaded:

* the VGG-16 backbone: torchvision's ``vgg16-397923af.pth`` (``--lpips-vgg16-weights`` or torch
  hub's cache, as :func:`gan_style.nn.vgg.load_vgg16` looks for it);
* the lin layers: the official ``lpips/weights/v0.1/vgg.pth`` layout (keys ``lin0.model.1.weight``
  ... ``lin4.model.1.weight``, each (1, C, 1, 1)); ``--lpips-weights`` or, when torchmetrics is
  installed, the copy it bundles (``torchmetrics/functional/image/lpips_models/vgg.pth``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from gan_style.errors import UserError

__all__ = ["LPIPS", "LPIPS_LAYERS", "LPIPS_WEIGHTS_URL", "bundled_lin_weights", "load_lpips", "mean_pairwise_distance"]

LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_WEIGHTS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"


def _unit_normalise(features: Tensor, eps: float = 1e-10) -> Tensor:
    """Zhang et al., Sec. 3: activations scaled to unit length along the channel dimension."""
    return features / (features.square().sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """The LPIPS distance of Eq. 1 between image batches in [-1, 1]; one value per pair."""

    def __init__(self, vgg16: nn.Module, lin_weights: Sequence[Tensor]) -> None:
        super().__init__()
        if len(lin_weights) != len(LPIPS_LAYERS):
            raise ValueError(f"LPIPS needs {len(LPIPS_LAYERS)} lin weights, got {len(lin_weights)}")
        self.vgg = vgg16
        for index, weight in enumerate(lin_weights):
            self.register_buffer(f"w{index}", weight.reshape(1, -1, 1, 1).float())

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        fx, fy = self.vgg(x, LPIPS_LAYERS), self.vgg(y, LPIPS_LAYERS)
        total = torch.zeros(x.shape[0], device=x.device)
        for index, layer in enumerate(LPIPS_LAYERS):
            diff = (_unit_normalise(fx[layer]) - _unit_normalise(fy[layer])).square()
            # w_l applied to the squared difference: || w * d ||^2 with the reference's lin layer
            # (a 1x1 convolution of the squared difference), then the spatial mean.
            total += (diff * getattr(self, f"w{index}")).sum(dim=1).mean(dim=(1, 2))
        return total


def bundled_lin_weights() -> Path | None:
    """The copy of the official v0.1 VGG lin weights that torchmetrics ships, if installed."""
    try:
        import torchmetrics
    except ImportError:
        return None
    path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "vgg.pth"
    return path if path.is_file() else None


def _read_lin_weights(path: Path) -> list[Tensor]:
    from gan_style.engine.checkpoint import read_weights

    state = read_weights(path)
    keys = [f"lin{index}.model.1.weight" for index in range(len(LPIPS_LAYERS))]
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise UserError(f"--lpips-weights {path}: not the official LPIPS lin-layer file (keys lin0.model.1.weight ... "
                        f"lin4.model.1.weight); use lpips' weights/v0.1/vgg.pth from {LPIPS_WEIGHTS_URL}")
    weights = [state[key] for key in keys]
    for weight, channels in zip(weights, LPIPS_CHANNELS):
        if weight.numel() != channels:
            raise UserError(f"--lpips-weights {path}: lin layers of the VGG variant have {LPIPS_CHANNELS} channels, "
                            f"got {[w.numel() for w in weights]}; use the vgg.pth file (not alex or squeeze)")
    return weights


def load_lpips(lin_weights: str | os.PathLike[str] | None = None, vgg16_weights: str | os.PathLike[str] | None = None,
               device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS-VGG with the lin layers of ``lin_weights`` (default: torchmetrics' bundled copy) on
    the VGG-16 of ``vgg16_weights`` (default: torch hub's cache). Missing files raise UserError."""
    from gan_style.nn.vgg import WeightsNotFoundError, load_vgg16

    if lin_weights is not None:
        lin_path = Path(lin_weights).expanduser()
        if not lin_path.is_file():
            raise UserError(f"--lpips-weights {lin_path} does not exist; give lpips' weights/v0.1/vgg.pth ({LPIPS_WEIGHTS_URL})")
    else:
        lin_path = bundled_lin_weights()
        if lin_path is None:
            raise UserError(f"lpips_diversity needs the LPIPS lin-layer weights: give --lpips-weights FILE "
                            f"(lpips' weights/v0.1/vgg.pth, {LPIPS_WEIGHTS_URL}) or install torchmetrics, which bundles them")
    weights = _read_lin_weights(lin_path)
    try:
        vgg = load_vgg16(vgg16_weights, input_range=(-1.0, 1.0))
    except WeightsNotFoundError as error:
        raise UserError("lpips_diversity needs VGG-16 weights (give --lpips-vgg16-weights FILE): " + " ".join(str(error).split())) from None
    return LPIPS(vgg, weights).eval().to(device)


def mean_pairwise_distance(lpips: LPIPS, groups: Sequence[Tensor]) -> float:
    """LPIPS diversity: for each group (the K >= 2 outputs (K, 3, H, W) in [-1, 1] of one input
    under random styles), the mean LPIPS over its K (K - 1) / 2 pairs, averaged over the groups
    (the diversity score of MUNIT, Huang et al. 2018, Sec. 5.1, and BicycleGAN)."""
    scores = []
    for group in groups:
        if group.shape[0] < 2:
            raise UserError("lpips_diversity needs at least 2 outputs per input (--num-styles 2 or more)")
        pairs = list(itertools.combinations(range(group.shape[0]), 2))
        first = group[[i for i, _ in pairs]]
        second = group[[j for _, j in pairs]]
        scores.append(lpips(first, second).mean())
    return float(torch.stack(scores).mean())
