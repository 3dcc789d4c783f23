"""The Inception-v3 feature network of FID and KID, loaded from a local file only.

The standard protocol (Heusel et al., NeurIPS 2017; the TensorFlow reference ``TTUR``) takes the
2048 pool features of the Inception-v3 graph of 2015-12-05, on images resized to 299 x 299.
torch-fidelity ships that graph converted to PyTorch as ``weights-inception-2015-12-05-6726825d.pth``
and torchmetrics wraps torch-fidelity's network (``NoTrainInceptionV3``); both would download the
file on first use. Here it is never downloaded: :func:`find_inception_weights` looks for the path
the user gives (``--inception-weights``), then in torch hub's checkpoint cache, where torch-fidelity
itself stores the file (``torch.hub.get_dir()/checkpoints``, which follows ``$TORCH_HOME``).

Images are resized to 299 px the way torch-fidelity and the TensorFlow reference do (bilinear,
TF 1.x style, no anti-aliasing: torchmetrics' ``antialias=False``), so that the figures compare
with published ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from gan_style.errors import UserError

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "InceptionFeatures",
    "find_inception_weights",
    "load_inception",
]

#: torch-fidelity's file name for the 2015-12-05 Inception-v3 weights, and where it is published.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
FEATURE_DIM = 2048


def find_inception_weights(user_path: str | os.PathLike[str] | None = None) -> Path:
    """The Inception weight file: ``user_path`` if given, else torch-fidelity's file in torch hub's
    checkpoint cache. A missing file raises :class:`UserError` naming the file, where it was
    looked for and where it comes from."""
    from gan_style.nn.vgg import WeightsNotFoundError, find_weights, torch_hub_checkpoint_dir

    try:
        return find_weights(
            user_path,
            [torch_hub_checkpoint_dir() / INCEPTION_FILE],
            "FID/KID Inception-v3 weights (torch-fidelity's 2015-12-05 file)",
            f"The file is torch-fidelity's {INCEPTION_FILE}, published at {INCEPTION_URL}; download it "
            f"yourself and pass --inception-weights FILE, or put it in {torch_hub_checkpoint_dir()} "
            f"(torch hub's cache; set $TORCH_HOME to move it).",
        )
    except WeightsNotFoundError as error:
        raise UserError(" ".join(str(error).split())) from None


class InceptionFeatures(nn.Module):
    """uint8 images (B, 3, H, W) -> the (B, 2048) pool features of the 2015-12-05 Inception-v3.

    ``identity`` names the weights (file name, size and modification time), so that cached
    features of the real set are reused only with the same network."""

    def __init__(self, network: nn.Module, identity: str) -> None:
        super().__init__()
        self.network = network
        self.identity = identity
        self.num_features = FEATURE_DIM

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.network(images).reshape(images.shape[0], -1).float()


def load_inception(weights: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """torchmetrics' Inception-v3 (torch-fidelity's network) with the weights of ``weights`` (or
    the cached file, see :func:`find_inception_weights`), in eval mode on ``device``.

    The file is first read weights-only (``gan_style.engine.checkpoint.read_weights``): a file
    holding pickled code is refused before torch-fidelity, which reads it unrestricted, sees it."""
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as error:  # pragma: no cover - torchmetrics is a dependency of the metrics extra
        raise UserError("FID and KID need torchmetrics and torch-fidelity: pip install 'torchmetrics[image]' torch-fidelity") from error
    from gan_style.engine.checkpoint import read_weights

    path = find_inception_weights(weights)
    state = read_weights(path)
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise UserError(f"--inception-weights {path}: not torch-fidelity's Inception-v3 state dict "
                        f"(no Mixed_7c.branch_pool.conv.weight); use {INCEPTION_FILE} from {INCEPTION_URL}")
    del state
    try:
        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURE_DIM)],
                                     feature_extractor_weights_path=str(path), antialias=False)
    except RuntimeError as error:  # load_state_dict: missing or mis-shaped tensors
        first = str(error).splitlines()[0]
        raise UserError(f"--inception-weights {path}: does not fit torch-fidelity's Inception-v3 ({first}); "
                        f"use {INCEPTION_FILE} from {INCEPTION_URL}") from None
    stat = path.stat()
    identity = f"inception-2015-12-05:{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
    return InceptionFeatures(network, identity).eval().to(device)
