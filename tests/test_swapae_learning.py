"""The Swapping Autoencoder learns on real images, on the CPU: the `demo` preset (reduced widths,
64 px, batch 4, an 8x8 structure code, reconstruction and patch co-occurrence at 4x their paper
weights, a weight average) trained for 1200 iterations (600 D and 600 G steps) on the paintings of
../shared/data/vangogh2photo and as many of its photos, then measured on 50 held-out pairs of
testA (paintings) and testB (photos): issue 9's whole criterion.

* the held-out reconstruction L1 falls well below its start;
* a swap takes the texture: its colour statistics and random-filter Gram statistics are closer to
  the texture image's than to the structure image's, while its luminance edges stay closer to the
  structure image's; in both directions (a photo with a painting's texture, a painting with a
  photo's texture).

Measured on a Zen 4 AMD EPYC (one thread, 9 minutes a run; 2026-12-06), seeds 1-5, distances of
the swap to the texture image / to the structure image at 1200 iterations:

    seed  rec. L1        photo <- painting: colour, Gram, edges    painting <- photo: colour, Gram, edges
    1     0.541 -> 0.289  0.35/0.51, 0.74/1.16, 87.0/84.3           0.36/0.53, 0.76/1.22, 87.7/84.9
    2     0.494 -> 0.284  0.32/0.50, 0.71/1.13, 87.0/85.4           0.37/0.45, 0.73/1.12, 87.7/85.6
    3     0.457 -> 0.289  0.34/0.48, 0.71/1.19, 87.2/84.1           0.35/0.45, 0.78/1.09, 87.6/84.5
    4     0.500 -> 0.271  0.36/0.43, 0.79/0.97, 87.1/85.0           0.36/0.43, 0.78/1.04, 87.0/85.0
    5     0.459 -> 0.278  0.36/0.43, 0.77/1.06, 87.4/86.0           0.38/0.43, 0.84/1.07, 87.4/85.5

All five meet it, and keep meeting it from iteration 400-1000 on (an evaluation every 200: ``python
eval/swapae_learning.py --data ../shared/data/vangogh2photo --balanced --held-out 50
--evaluate-every 200 --seed N``). On 2 threads (as CI runs it; other rounding, another run) seeds 1
and 4 meet it too, from iteration 800 on (seed 1 at 1200: 0.32/0.47, 0.71/1.09, 87.1/85.3 and
0.32/0.50, 0.74/1.15, 87.2/86.3); with an AVX2-only CPU's kernels (emulated: ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2, 2 threads) seed 1 meets it at 1200 but not at
800 (0.35/0.50, 0.78/1.14, 86.9/84.7 and 0.35/0.48, 0.79/1.14, 87.1/86.1), and with MKL_CBWR=COMPATIBLE
from 800 on (0.35/0.47, 0.79/1.07, 86.9/84.8 and 0.35/0.46, 0.77/1.13, 87.3/85.5). The edge margins are
the thinnest (1.0-3.8 %): at 64 px after 1200 iterations the outputs are blurred, and even the
structure image's own reconstruction correlates weakly with its edges (83.8 against 87.2 for the
texture image's, seed 4); measured on the luminance averaged over 4x4 blocks (the layout) the
margins are 16-30 %.

The kernels are fixed for these runs (channels-last, Winograd, PyTorch's strided and image-side
convolutions; gan_style.evaluation.swap_statistics.short_run): left to the trainer's timings, they
changed from process to process, and with them the rounding and the run. A whole suite on an AMX
Xeon (2026-12-07, 2 threads) once missed with them: painting <- photo colour 0.460/0.369. Fixed,
that machine gives the same run every time (seed 1 at 1200: 0.35/0.46, 0.79/1.02, 87.1/84.9 and
0.40/0.42, 0.85/1.08, 87.5/84.8); its thinnest margin there is that colour distance, 4 %.

The paintings are balanced with photos (vangogh2photo has four photos for each painting): on all
of it, the swaps' colour and Gram statistics took the paintings' less often (docs/swapae.md). With
the paper's loss weights no configuration meets the criterion in a CPU budget: the image GAN holds
the reconstruction back (0.35 after 1200 iterations, edges as close to either image), and without
the weight average the swaps' colour swings from one evaluation to the next."""

from __future__ import annotations

import pytest

from conftest import DATA, require_shared
from gan_style.evaluation.swap_statistics import criterion_misses, short_run, swap_distances

ITERATIONS = 1200
PAIRS = 50  # all of testA


@pytest.mark.slow
def test_swapae_reconstructs_and_its_swaps_take_the_texture_and_keep_the_structure_on_real_images(tmp_path):
    root = require_shared(DATA / "vangogh2photo")
    first, last = short_run(root, tmp_path, ITERATIONS, batch_size=4, seed=1, pairs=PAIRS, balanced=True)
    assert last.reconstruction < 0.7 * first.reconstruction, f"held-out reconstruction L1 {first.reconstruction:.3f} -> {last.reconstruction:.3f}"
    table = swap_distances(last.directions)
    figures = "; ".join(f"{direction}: " + ", ".join(f"{name} {t:.3f}/{s:.3f}" for name, (t, s) in row.items()) for direction, row in table.items())
    assert not criterion_misses(table), f"missed: {criterion_misses(table)} (distances to the texture / structure image: {figures})"
