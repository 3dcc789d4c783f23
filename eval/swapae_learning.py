"""How far a short CPU run of the Swapping Autoencoder gets on real images (paintings and photos
together, 64 px, the demo preset's reduced widths): the held-out reconstruction error before and
after, and for swaps (photo structure, painting texture) the distances of their colour statistics,
local Gram statistics and luminance edges to the texture image and to the structure image.

    python eval/swapae_learning.py --data ../shared/data/vangogh2photo --steps 1500

A swap that takes the texture is closer to the texture image in colour and Gram statistics and
closer to the structure image in edges.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from gan_style.config import parse_set_arguments
from gan_style.data.images import find_images, load_rgb, pil_to_tensor
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.evaluation.swap_statistics import colour_stats, distance, edges, local_gram
from gan_style.methods.swapae import SwapAE


def held_out(folder, count):
    return torch.stack([pil_to_tensor(load_rgb(p).resize((64, 64))) for p in find_images(folder)[:count]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with trainA/trainB and testA/testB (vangogh2photo)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the demo preset")
    args = parser.parse_args()
    root = Path(args.data)
    config = config_from_overrides(SwapAE, "demo", {
        "data": {"root": str(root), "load_size": 64, "crop_size": 64},
        "train": {"batch_size": 4, "max_steps": args.steps, "log_every": 50, "image_every": 10**9, "save_every": 10**9, "seed": args.seed},
        **parse_set_arguments(args.set),
    })
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(SwapAE(config), Path(run), show_progress=True)
        paintings, photos = held_out(root / "testA", 8), held_out(root / "testB", 8)
        E, G = trainer.unwrapped("E"), trainer.unwrapped("G")

        def reconstruction_error() -> float:
            with torch.no_grad():
                images = torch.cat([paintings, photos])
                return F.l1_loss(G(*E(images), noise=torch.Generator().manual_seed(0)), images).item()

        before = reconstruction_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit()
        after = reconstruction_error()
        with torch.no_grad():
            structure, _ = E(photos)
            _, texture = E(paintings)
            swapped = G(structure, texture, noise=torch.Generator().manual_seed(0)).clamp(-1, 1)
            reconstructed = G(*E(photos), noise=torch.Generator().manual_seed(0)).clamp(-1, 1)
    print(f"held-out reconstruction L1: {before:.3f} -> {after:.3f} after {args.steps} steps")
    for name, stat in (("colour", colour_stats), ("Gram", local_gram), ("edges", edges)):
        to_texture, to_structure = distance(stat(swapped), stat(paintings)).mean(), distance(stat(swapped), stat(photos)).mean()
        unswapped = distance(stat(reconstructed), stat(paintings)).mean()
        print(f"swap {name:6s} distance: to the texture image {to_texture:.4f}, to the structure image {to_structure:.4f}"
              f" (the structure image's reconstruction to the texture image: {unswapped:.4f})")


if __name__ == "__main__":
    main()
