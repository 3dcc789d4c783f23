"""CycleGAN learns on real paintings and photos (../shared/data/vangogh2photo), on the CPU.

Reduced widths (ngf/ndf 16) and 64 px crops keep it to about a minute; the code path is the real
one (dataset, trainer, method, checkpoint)."""

from __future__ import annotations

import pytest
import torch

from conftest import DATA, require_shared
from gan_style.data.config import DataConfig
from gan_style.data.unpaired import UnpairedImageDataset
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods.cyclegan import CycleGAN

STEPS = 400


def held_out_batch(root, count=32):
    config = DataConfig(root=str(root), phase="test", preprocess="resize_and_crop", load_size=64, crop_size=64, no_flip=True, serial_batches=True)
    dataset = UnpairedImageDataset(config, seed=1)
    items = [dataset[i] for i in range(count)]
    return torch.stack([it["A"] for it in items]), torch.stack([it["B"] for it in items])


@torch.no_grad()
def evaluate(trainer, real_A, real_B):
    nets = {name: net.eval() for name, net in trainer.networks.items()}
    fake_B, fake_A = nets["G_A"](real_A), nets["G_B"](real_B)
    cycle_error = 0.5 * ((nets["G_B"](fake_B) - real_A).abs().mean() + (nets["G_A"](fake_A) - real_B).abs().mean())
    # LSGAN targets are 1 (real) and 0 (fake): call an image real when its mean patch score > 0.5.
    real_scores = torch.cat([nets["D_A"](real_B).flatten(1).mean(1), nets["D_B"](real_A).flatten(1).mean(1)])
    fake_scores = torch.cat([nets["D_A"](fake_B).flatten(1).mean(1), nets["D_B"](fake_A).flatten(1).mean(1)])
    # AUC: the chance that a real image scores above a translated one (0.5 = chance).
    auc = (real_scores[:, None] > fake_scores[None, :]).float().mean()
    for net in nets.values():
        net.train()
    return cycle_error.item(), auc.item()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_cyclegan_learns_vangogh2photo_on_cpu(tmp_path, precision):
    """fp32, and bf16 autocast (fp32 master weights and optimiser state, fp32 losses)."""
    root = require_shared(DATA / "vangogh2photo")
    config = config_from_overrides(CycleGAN, "paper", {
        "ngf": 16, "ndf": 16, "netG": "resnet_6blocks",
        "data": {"root": str(root), "load_size": 72, "crop_size": 64, "max_dataset_size": 200},
        "train": {"max_steps": STEPS, "batch_size": 2, "log_every": 50, "image_every": 1000, "save_every": 10_000,
                  "mixed_precision": precision, "precision_fallback": False},
    })
    trainer = Trainer(CycleGAN(config), tmp_path / "run", show_progress=False)
    real_A, real_B = held_out_batch(root)
    start_cycle, start_auc = evaluate(trainer, real_A, real_B)
    trainer.fit()
    end_cycle, end_auc = evaluate(trainer, real_A, real_B)
    print(f"held-out cycle L1 {start_cycle:.3f} -> {end_cycle:.3f}; D real-vs-translated AUC {start_auc:.2f} -> {end_auc:.2f}")
    # On held-out images: reconstructions much closer than at the start ...
    assert end_cycle < 0.6 * start_cycle, (start_cycle, end_cycle)
    # ... and the discriminators tell real from translated images better than chance.
    assert end_auc > 0.68, end_auc
