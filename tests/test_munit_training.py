"""MUNIT learns on real data (../shared/data/vangogh2photo), small networks at 64 px on CPU:

* the reconstruction terms (eq. 1 images, eq. 2 contents) fall well below their start within
  400 iterations (mean of the last 50 against the first 10);
* multimodality: a photo translated with 4 random styles gives clearly different paintings (the
  mean per-pixel std across the 4 styles), while the content codes of the 4 translations agree
  (their spread is a fraction of the distance between the content codes of different photos).

About 50 s on one core (one thread: two threads on a shared 2-core machine stall on each other).
"""

from __future__ import annotations

import pytest
import torch

from conftest import DATA, require_shared
from gan_style.data.images import load_rgb, pil_to_tensor
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods.munit import MUNIT, random_styles

STEPS = 400


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_munit_learns_and_translates_one_photo_many_ways(tmp_path, one_thread):
    root = require_shared(DATA / "vangogh2photo")  # A: Van Gogh paintings, B: photos
    config = config_from_overrides(MUNIT, "paper", {
        "gen_dim": 16, "mlp_dim": 64, "n_res": 2, "dis_dim": 16, "dis_n_layer": 3,
        "data": {"root": str(root), "load_size": 64, "crop_size": 64},
        "train": {"max_steps": STEPS, "lr_policy": "constant", "log_every": 100, "image_every": 1000, "save_every": 1000},
    })
    history: list[dict[str, float]] = []
    trainer = Trainer(MUNIT(config), tmp_path / "run", show_progress=False)
    trainer.fit(lambda step, logs: history.append({k: float(v) for k, v in logs.items()}))
    assert len(history) == STEPS and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)

    falls = {}
    for term in ("recon_x_A", "recon_x_B", "recon_c_A", "recon_c_B"):
        series = [h[f"loss/G/{term}"] for h in history]
        falls[term] = (mean(series[:10]), mean(series[-50:]))
    print("reconstruction terms, first 10 -> last 50 iterations:", {k: f"{a:.3f} -> {b:.3f}" for k, (a, b) in falls.items()})
    # measured: recon_x 6.2 -> 2.1 (A), 4.4 -> 1.9 (B); recon_c 1.7 -> 0.7
    for term, (first, last) in falls.items():
        assert last < (0.6 if term.startswith("recon_x") else 0.75) * first, f"{term} did not fall enough: {first:.3f} -> {last:.3f}"

    photos = sorted((root / "testB").iterdir())[:8]
    x = torch.stack([pil_to_tensor(load_rgb(p).resize((64, 64))) for p in photos])
    G_A, G_B = trainer.unwrapped("G_A").eval(), trainer.unwrapped("G_B").eval()
    with torch.no_grad():
        content = G_B.enc_content(x)
        styles = random_styles(4, config.style_dim, seed=1)
        paintings = torch.stack([G_A.decode(content, s[None].expand(len(x), -1, -1, -1)) for s in styles])  # (4, N, 3, H, W)
        spread = paintings.std(0).mean().item()
        codes = torch.stack([G_A.enc_content(p) for p in paintings])  # the contents of the 4 translations
        within = (codes - codes.mean(0)).abs().mean().item()
        between = (content - content.roll(1, 0)).abs().mean().item()  # content codes of different photos
        reconstruction = (G_B(x) - x).abs().mean().item()
    print(f"B->A with 4 random styles: per-pixel std across the styles {spread:.3f}; content codes of the translations: "
          f"spread {within:.3f} vs {between:.3f} between photos; test-photo reconstruction L1 {reconstruction:.3f}")
    # measured: std 0.32; spread 0.25 vs 1.14 between photos; reconstruction 0.19
    assert spread > 0.1, "random styles should give clearly different translations"
    assert within < 0.5 * between, "the translations of one photo should keep its content"
    assert reconstruction < 0.35
