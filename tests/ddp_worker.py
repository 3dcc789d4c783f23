"""Run by the conformance suite under `accelerate launch --multi_gpu --num_processes 2` (gloo on
CPU): a few steps of METHOD's smoke preset (in train.mixed_precision PRECISION, default no), then
every process writes a fingerprint of the batches it saw, its precision and its weights' checksums."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods import get_method


def main(method_name: str, out_dir: str, precision: str = "no") -> None:
    method_cls = get_method(method_name)
    config = config_from_overrides(method_cls, "smoke", {"train": {"max_steps": 3, "log_every": 1, "image_every": 100, "mixed_precision": precision}})
    trainer = Trainer(method_cls(config), Path(out_dir) / "run", show_progress=False)
    seen: list[float] = []
    original = trainer.train_step

    def recording_step(batch):
        first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        seen.append(round(float(first.double().sum()), 6))
        return original(batch)

    trainer.train_step = recording_step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    rank = trainer.accelerator.process_index
    report = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "seen": seen,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "checksums": {name: float(sum(p.double().sum() for p in net.parameters())) for name, net in trainer.networks.items()},
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
