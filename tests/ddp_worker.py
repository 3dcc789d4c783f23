"""Run by tests/test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on
CPU): a few CycleGAN steps, then every process writes what it saw and its weights' checksums."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gan_style.engine.trainer import Trainer
from gan_style.methods.base import config_from_overrides
from gan_style.methods.cyclegan import CycleGAN


def main(out_dir: str) -> None:
    config = config_from_overrides(CycleGAN, "paper", {
        "ngf": 4, "ndf": 4, "netG": "resnet_6blocks", "pool_size": 2,
        "data": {"root": "demo", "load_size": 36, "crop_size": 32, "max_dataset_size": 8},
        "train": {"max_steps": 3, "batch_size": 1, "log_every": 1, "image_every": 100},
    })
    trainer = Trainer(CycleGAN(config), Path(out_dir) / "run", show_progress=False)
    seen: list[str] = []
    original = trainer.train_step

    def recording_step(batch):
        seen.extend(batch["A_path"])
        return original(batch)

    trainer.train_step = recording_step
    trainer.fit()
    rank = trainer.accelerator.process_index
    report = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "seen": seen,
        "checksums": {name: float(sum(p.double().sum() for p in net.parameters())) for name, net in trainer.networks.items()},
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
