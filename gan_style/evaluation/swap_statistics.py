"""Statistics that tell whether a swap took the texture image's texture and kept the structure
image's layout, without a pretrained network (none is needed, none is on the test machines):
per-channel colour moments, Gram matrices of a fixed bank of random filters (local texture, as
Gatys' Gram statistics but on random features), and normalised luminance edges."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def colour_stats(images: Tensor) -> Tensor:
    """Per-channel means and standard deviations."""
    flat = images.flatten(2)
    return torch.cat([flat.mean(2), flat.std(2)], 1)


def local_gram(images: Tensor) -> Tensor:
    """Gram matrices of a fixed bank of random 5x5 filters: local texture statistics without a
    pretrained network (none is on this machine)."""
    bank = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(0)) / 8
    features = F.relu(F.conv2d(images, bank)).flatten(2)
    return torch.einsum("bcn,bdn->bcd", features, features).flatten(1) / features.shape[-1]


def edges(images: Tensor) -> Tensor:
    """Sobel gradient magnitude of the luminance, normalised per image."""
    luminance = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    gx = F.conv2d(luminance, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(luminance, sobel.t().reshape(1, 1, 3, 3))
    magnitude = (gx.square() + gy.square()).sqrt().flatten(1)
    return (magnitude - magnitude.mean(1, keepdim=True)) / (magnitude.std(1, keepdim=True) + 1e-8)


def distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Euclidean distance of two batches of statistics."""
    return (a - b).norm(dim=1)


def _decode(G, structure: Tensor, texture: Tensor, seed: int) -> Tensor:
    return G(structure, texture, noise=torch.Generator().manual_seed(seed)).clamp(-1, 1)


@torch.no_grad()
def reconstruction_error(E, G, images: Tensor, seed: int = 0) -> float:
    """Mean L1 between ``images`` and G(E(images)) (clamped to [-1, 1], the noise of ``seed``)."""
    return F.l1_loss(_decode(G, *E(images), seed), images).item()


@torch.no_grad()
def swap_directions(E, G, paintings: Tensor, photos: Tensor, seed: int = 0) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Both swap directions of paired batches: for each, (swap, the structure images' own
    reconstruction, the texture images, the structure images)."""
    (photo_structure, photo_texture), (painting_structure, painting_texture) = E(photos), E(paintings)
    return {
        "photo structure, painting texture": (_decode(G, photo_structure, painting_texture, seed),
                                              _decode(G, photo_structure, photo_texture, seed), paintings, photos),
        "painting structure, photo texture": (_decode(G, painting_structure, photo_texture, seed),
                                              _decode(G, painting_structure, painting_texture, seed), photos, paintings),
    }


def held_out_images(folder, count: int, side: int = 64) -> Tensor:
    """The first ``count`` images of ``folder`` (sorted), resized to ``side`` pixels, in [-1, 1]."""
    from gan_style.data.images import find_images, load_rgb, pil_to_tensor

    return torch.stack([pil_to_tensor(load_rgb(path).resize((side, side))) for path in find_images(folder)[:count]])


def short_run(root, run_dir, steps: int, batch_size: int = 4, seed: int = 1, pairs: int = 16, overrides=None,
              show_progress: bool = False) -> tuple[float, float, dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]]:
    """Train the demo preset at 64 px on ``root`` (vangogh2photo: all its images, one folder tree) for
    ``steps`` iterations and measure it on ``pairs`` held-out paintings (testA) and photos (testB):
    (reconstruction L1 before, after, ``swap_directions`` after)."""
    import warnings
    from pathlib import Path

    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods.swapae import SwapAE

    root = Path(root)
    config = config_from_overrides(SwapAE, "demo", {
        "data": {"root": str(root), "load_size": 64, "crop_size": 64},
        "train": {"batch_size": batch_size, "max_steps": steps, "log_every": 50, "image_every": 10**9, "save_every": 10**9, "seed": seed},
        **(overrides or {}),
    })
    trainer = Trainer(SwapAE(config), Path(run_dir), show_progress=show_progress)
    paintings, photos = held_out_images(root / "testA", pairs), held_out_images(root / "testB", pairs)
    E, G = trainer.unwrapped("E"), trainer.unwrapped("G")
    before = reconstruction_error(E, G, torch.cat([paintings, photos]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    after = reconstruction_error(E, G, torch.cat([paintings, photos]))
    return before, after, swap_directions(E, G, paintings, photos)
