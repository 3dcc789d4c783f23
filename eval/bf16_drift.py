"""How far a bf16 run's losses drift from the fp32 run's with the same seed and data.

    python eval/bf16_drift.py --method cyclegan --steps 300 [--data ../shared/data/vangogh2photo]
    python eval/bf16_drift.py --method cyclegan --set ngf=32 --variant train.winograd=true

Trains the same reduced-width model twice from the same seed (fp32 with direct convolutions,
then with the ``--variant`` settings, by default train.mixed_precision=bf16) on 64 px crops and
prints, per loss term, the mean over the last quarter of each run and their relative
difference; GAN training is chaotic, so per-step values diverge quickly and only such averages
are comparable. ``--set`` applies to both runs (``ngf=32`` gives 128-channel residual blocks,
wide enough for Winograd); a variant that only changes rounding (``train.channels_last``)
measures the noise floor.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections import defaultdict

import torch

from gan_style.config import parse_set_arguments
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.trainer import Trainer
from gan_style.methods import get_method

REDUCED = {"cyclegan": {"ngf": 16, "ndf": 16, "netG": "resnet_6blocks"}, "cut": {"ngf": 16, "ndf": 16, "netG": "resnet_6blocks"}}


def losses_of_run(method_name: str, steps: int, data: str, overrides: dict) -> dict[str, list[float]]:
    method_cls = get_method(method_name)
    config = config_from_overrides(method_cls, "paper", {
        **REDUCED.get(method_name, {}),
        "data": {"root": data, "load_size": 72, "crop_size": 64, "max_dataset_size": 200},
        "train": {"max_steps": steps, "batch_size": 2, "log_every": 10**9, "image_every": 10**9, "save_every": 10**9,
                  "mixed_precision": "no", "precision_fallback": False, "winograd": False, "seed": 0},
    } | overrides)
    trainer = Trainer(method_cls(config), run_dir=None, show_progress=False)
    dataset = trainer.method.build_dataset(config.train.seed, 1)
    history: dict[str, list[float]] = defaultdict(list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step in range(steps):
            items = [dataset[(2 * step + i) % len(dataset)] for i in range(2)]
            batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if hasattr(items[0][key], "shape")}
            for key, value in trainer.train_step(batch).items():
                if key.startswith("loss/"):
                    history[key].append(float(value))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="cyclegan", choices=sorted(REDUCED))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data", default="../shared/data/vangogh2photo")
    parser.add_argument("--set", dest="common", action="append", metavar="KEY=VALUE", help="a setting of both runs")
    parser.add_argument("--variant", action="append", metavar="KEY=VALUE", help="a setting of the second run (default train.mixed_precision=bf16)")
    args = parser.parse_args()
    common = parse_set_arguments(args.common)
    variant = parse_set_arguments(args.variant or ["train.mixed_precision=bf16"])
    runs = {name: losses_of_run(args.method, args.steps, args.data, overrides)
            for name, overrides in (("baseline", common), ("variant", common | variant))}
    tail = args.steps * 3 // 4
    print(f"{args.method}, {args.steps} steps, mean of the last {args.steps - tail}; variant {' '.join(args.variant or ['train.mixed_precision=bf16'])}:")
    for key in sorted(runs["baseline"]):
        baseline, other = statistics.fmean(runs["baseline"][key][tail:]), statistics.fmean(runs["variant"][key][tail:])
        print(f"  {key:28s} baseline {baseline:8.4f}  variant {other:8.4f}  relative difference {abs(other - baseline) / max(abs(baseline), 1e-8):6.1%}")


if __name__ == "__main__":
    main()
