"""How far a short CPU run of the Swapping Autoencoder gets on real images (paintings and photos
together, 64 px, the demo preset): the held-out reconstruction error before, during and after, and
for swaps in both directions (photo structure with painting texture, painting structure with photo
texture) the distances of their colour statistics, local Gram statistics and luminance edges (at
full resolution, and on the luminance averaged over 2x2 and 4x4 blocks: the layout) to the texture
image and to the structure image, and whether issue 9's whole criterion holds at each edge scale.

    python eval/swapae_learning.py --data ../shared/data/vangogh2photo --balanced --held-out 50 --evaluate-every 200 [--seed N] [--set KEY=VALUE]

A swap that takes the texture is closer to the texture image in colour and Gram statistics and
closer to the structure image in edges. With the demo preset (an 8x8 structure code at 64 px, the
reconstruction and patch co-occurrence terms at 4x their paper weights, a weight average of 0.995)
on the paintings and as many photos (``--balanced``), seeds 1-5 meet it at 1200 iterations, from
iteration 400-1000 on (9 minutes a run on one thread of a Zen 4 EPYC; docs/swapae.md has the
table and the configurations tried on the way; tests/test_swapae_learning.py asserts it for seed
1). The evaluations use the networks inference uses: the weight average's.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

from gan_style.config import parse_set_arguments
from gan_style.errors import UserError
from gan_style.evaluation.swap_statistics import colour_stats, criterion_misses, distance, edges, local_gram, short_run, swap_distances

EDGE_SCALES = (1, 2, 4)
SHORT = {"photo structure, painting texture": "photo<-painting", "painting structure, photo texture": "painting<-photo"}


def summary(evaluation) -> str:
    """One line: the reconstruction error, each direction's distances (to the texture / to the
    structure image) and the criterion's misses at each edge scale."""
    parts = [f"step {evaluation.step:5d}  rec {evaluation.reconstruction:.3f}"]
    tables = {scale: swap_distances(evaluation.directions, scale) for scale in EDGE_SCALES}
    for direction, row in tables[1].items():
        edge_text = " ".join("{:.1f}/{:.1f}".format(*tables[s][direction]["edges"]) for s in EDGE_SCALES)
        parts.append(f"{SHORT[direction]}: colour {row['colour'][0]:.2f}/{row['colour'][1]:.2f} Gram {row['Gram'][0]:.2f}/{row['Gram'][1]:.2f} edges {edge_text}")
    verdicts = []
    for scale in EDGE_SCALES:
        misses = [miss.replace(direction, SHORT[direction]) for miss in criterion_misses(tables[scale]) for direction in SHORT if miss.startswith(direction)]
        verdicts.append(f"x{scale}: " + ("met" if not misses else "missed " + ", ".join(misses)))
    return "  ".join(parts) + "  | criterion with edges " + "; ".join(verdicts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder with trainA/trainB and testA/testB (vangogh2photo)")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=16, help="images of testA and of testB (pairs)")
    parser.add_argument("--evaluate-every", type=int, default=None, metavar="N", help="also measure every N iterations")
    parser.add_argument("--balanced", action="store_true", help="train on as many photos as paintings (all trainA, an even sample of trainB)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the demo preset")
    args = parser.parse_args()
    missing = [sub for sub in ("trainA", "trainB", "testA", "testB") if not (Path(args.data) / sub).is_dir()]
    if missing:
        sys.exit(f"error: --data {args.data}: no {', '.join(missing)} folder; give a dataset laid out as trainA, trainB, testA, testB (vangogh2photo)")
    try:  # a malformed or unknown --set: one line (the config is built before any training)
        with tempfile.TemporaryDirectory() as run:
            evaluations = short_run(args.data, run, args.steps, args.batch_size, args.seed, args.held_out, parse_set_arguments(args.set),
                                    show_progress=True, evaluate_every=args.evaluate_every, balanced=args.balanced)
    except UserError as error:
        sys.exit(f"error: {error}")
    for evaluation in evaluations:
        print(summary(evaluation))
    first, last = evaluations[0], evaluations[-1]
    print(f"held-out reconstruction L1: {first.reconstruction:.3f} -> {last.reconstruction:.3f} after {last.step} steps")
    for direction, (swapped, own, texture, structure) in last.directions.items():
        print(direction)
        for name, stat in (("colour", colour_stats), ("Gram", local_gram), *((f"edges x{s}", functools.partial(edges, scale=s)) for s in EDGE_SCALES)):
            to_texture, to_structure = distance(stat(swapped), stat(texture)), distance(stat(swapped), stat(structure))
            own_to_texture, own_to_structure = distance(stat(own), stat(texture)).mean(), distance(stat(own), stat(structure)).mean()
            print(f"  swap {name:8s} distance: to the texture image {to_texture.mean():.4f}, to the structure image {to_structure.mean():.4f}"
                  f" ({(to_texture < to_structure).float().mean():.0%} of pairs closer to the texture image;"
                  f" the structure image's reconstruction: {own_to_texture:.4f} to the texture image, {own_to_structure:.4f} to its own)")


if __name__ == "__main__":
    main()
