"""The Swapping Autoencoder learns on real images (../shared/data/vangogh2photo, paintings and
photos in one folder tree), on the CPU: the demo preset's reduced widths, 64 px, 400 iterations
(200 D and 200 G steps, about a minute).

What a run this short shows, measured (eval/swapae_learning.py gives the same figures for longer
runs): the held-out reconstruction error falls (0.43 -> 0.35), and the texture code steers the
output: swapping in a painting's texture code moves the photo's colour and Gram statistics towards
the painting (compared with the photo's own reconstruction) while its luminance edges stay the
photo's. That the swap is closer to the texture image than to the structure image in colour is
not reached in this budget (see docs/swapae.md)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import DATA, require_shared
from gan_style.data.images import find_images, load_rgb, pil_to_tensor
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.evaluation.swap_statistics import colour_stats, distance, edges, local_gram
from gan_style.methods.swapae import SwapAE

ITERATIONS = 400


def held_out(folder, count=8):
    return torch.stack([pil_to_tensor(load_rgb(path).resize((64, 64))) for path in find_images(folder)[:count]])


@pytest.mark.slow
def test_swapae_reconstructs_and_its_texture_code_steers_colour_on_real_images(tmp_path):
    root = require_shared(DATA / "vangogh2photo")
    config = config_from_overrides(SwapAE, "demo", {
        "data": {"root": str(root), "load_size": 64, "crop_size": 64},
        "train": {"batch_size": 4, "max_steps": ITERATIONS, "log_every": 50, "image_every": 10**9, "save_every": 10**9, "seed": 1},
    })
    trainer = Trainer(SwapAE(config), tmp_path / "run", show_progress=False)
    paintings, photos = held_out(root / "testA"), held_out(root / "testB")
    E, G = trainer.unwrapped("E"), trainer.unwrapped("G")

    def decode(structure, texture):
        return G(structure, texture, noise=torch.Generator().manual_seed(0)).clamp(-1, 1)

    def reconstruction_error():
        with torch.no_grad():
            images = torch.cat([paintings, photos])
            return F.l1_loss(decode(*E(images)), images).item()

    before = reconstruction_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    after = reconstruction_error()
    assert after < 0.88 * before, f"held-out reconstruction L1 {before:.3f} -> {after:.3f}"

    with torch.no_grad():
        photo_structure, photo_texture = E(photos)
        _, painting_texture = E(paintings)
        swapped, own = decode(photo_structure, painting_texture), decode(photo_structure, photo_texture)
    for name, statistic in (("colour", colour_stats), ("Gram", local_gram)):
        swap_to_painting = distance(statistic(swapped), statistic(paintings)).mean()
        own_to_painting = distance(statistic(own), statistic(paintings)).mean()
        assert swap_to_painting < 0.95 * own_to_painting, f"{name}: swap {swap_to_painting:.3f} vs own reconstruction {own_to_painting:.3f}"
    to_photo, to_painting = distance(edges(swapped), edges(photos)).mean(), distance(edges(swapped), edges(paintings)).mean()
    assert to_photo < to_painting, f"edges: to the structure image {to_photo:.1f}, to the texture image {to_painting:.1f}"
