"""How far a short CPU run of the Swapping Autoencoder gets on real images (paintings and photos
together, 64 px, the demo preset's reduced widths): the held-out reconstruction error before and
after, and for swaps in both directions (photo structure with painting texture, painting structure
with photo texture) the distances of their colour statistics, local Gram statistics and luminance
edges to the texture image, to the structure image, and those of the structure image's own
reconstruction to the texture image; with the share of pairs closer to the texture image.

    python eval/swapae_learning.py --data ../shared/data/vangogh2photo --steps 1200 [--set KEY=VALUE]

A swap that takes the texture is closer to the texture image in colour and Gram statistics and
closer to the structure image in edges. Measured with this script and a harness like it (16
held-out pairs of testA/testB, seed 1, one CPU thread, about 0.37 s an iteration at batch 4),
this is not reached in 1200 iterations by any configuration tried (docs/swapae.md has the table):

* the demo preset (structure code 8 x 16 x 16 at 64 px) keeps too much in the structure code: the
  swap's colour stays closer to the structure image (0.32 vs 0.38 at 1500 steps), as it does with
  ``spatial_code_ch=2`` (0.34 vs 0.55 at 1200);
* ``netE_num_downsampling_sp=4 netE_num_downsampling_gl=1`` (4 x 4, the paper's 1/16 of the side)
  turns it round: colour 0.40 vs 0.61 and Gram 1.02 vs 1.42 to the texture image at 1000 steps,
  both directions, but the structure code is not used yet: the reconstruction error hardly falls
  (0.435 -> 0.40) and the edges are as close to either image (87.2 vs 87.2); at 2400 steps (``--steps
  2400``, 19 minutes on one thread) seed 1 meets the whole criterion in both directions with the
  paper's loss weights; seeds 2, 3 and 4 miss it (one direction's edges; both directions' edges;
  one direction's colour and Gram);
* in between (8 x 8: ``netE_num_downsampling_sp=3`` with 2, 4 or 8 channels, batch 8, a weight
  average ``train.ema_decay=0.995``, 8 patch crops) the figures hover around parity and change
  sides from one evaluation to the next (every 200 iterations): sometimes one direction meets the
  whole criterion, never both, never for long.

With the patch co-occurrence loss at 4x its paper weight (``--set netE_num_downsampling_sp=3 --set
lambda_PatchGAN=4``) seeds 1 and 2 met the whole criterion on an Intel Xeon (seed 3 did not), and
seeds 3 and 4 did on an AMD EPYC while seeds 1 and 2 did not (docs/swapae.md): another CPU's
rounding takes 1200 GAN steps elsewhere, and about half the seeds get there.
"""

from __future__ import annotations

import argparse
import tempfile

from gan_style.config import parse_set_arguments
from gan_style.evaluation.swap_statistics import colour_stats, distance, edges, local_gram, short_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with trainA/trainB and testA/testB (vangogh2photo)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=16, help="images of testA and of testB (pairs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the demo preset")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run:
        before, after, directions = short_run(args.data, run, args.steps, args.batch_size, args.seed, args.held_out,
                                              parse_set_arguments(args.set), show_progress=True)
    print(f"held-out reconstruction L1: {before:.3f} -> {after:.3f} after {args.steps} steps")
    for direction, (swapped, own, texture, structure) in directions.items():
        print(direction)
        for name, stat in (("colour", colour_stats), ("Gram", local_gram), ("edges", edges)):
            to_texture, to_structure = distance(stat(swapped), stat(texture)), distance(stat(swapped), stat(structure))
            unswapped = distance(stat(own), stat(texture)).mean()
            print(f"  swap {name:6s} distance: to the texture image {to_texture.mean():.4f}, to the structure image {to_structure.mean():.4f}"
                  f" ({(to_texture < to_structure).float().mean():.0%} of pairs closer to the texture image;"
                  f" the structure image's reconstruction to the texture image: {unswapped:.4f})")


if __name__ == "__main__":
    main()
