"""Shared test fixtures: paths to ../shared (real images, golden reference files)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from browser import browser  # noqa: F401  (the headless Chromium fixture)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GAN_STYLE_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"


def require_shared(path: Path) -> Path:
    """Skip the test, saying why, when a file of ../shared is not there."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared data folder (../shared beside the repo, or GAN_STYLE_SHARED)")
    return path


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Keep CPU tests quick and reproducible on the 2-core CI machine.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def demo_cache(tmp_path_factory, monkeypatch):
    """The built-in demo set in a per-session cache folder (built once, a few seconds)."""
    cache = tmp_path_factory.getbasetemp() / "gan_style_cache"
    monkeypatch.setenv("GAN_STYLE_CACHE", str(cache))
    return cache


def assert_golden_close(out: torch.Tensor, ref: torch.Tensor, name: str) -> float:
    """The golden README's bound: max|out - ref| <= 1e-4 * min(1, max|ref|) (scaled down for
    outputs smaller than 1, where an absolute bound would accept zeros). Returns the error."""
    out = out.reshape(ref.shape) if out.numel() == ref.numel() else out
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    error = (out - ref).abs().max().item()
    bound = 1e-4 * min(1.0, ref.abs().max().item())
    assert error <= bound, f"{name}: max abs error {error:.3g} > {bound:.3g}"
    return error


class Streams(dict):
    """The engine's named random streams as a phase sees them (a fresh seeded generator per
    name), for calling a method's phases by hand."""

    def __missing__(self, name: str) -> torch.Generator:
        self[name] = stream = torch.Generator().manual_seed(0)
        return stream


#: CycleGAN at tiny widths on four demo images (the engine's tests; each adds its train options)
TINY_CYCLEGAN = {
    "ngf": 4,
    "ndf": 4,
    "netG": "resnet_6blocks",
    "pool_size": 2,
    "data": {"root": "demo", "load_size": 36, "crop_size": 32, "max_dataset_size": 4},
}


def tiny_cyclegan_config(train_base: dict, **train):
    """CycleGAN's paper preset with ``TINY_CYCLEGAN``, ``train_base`` as its train options, then ``train``."""
    from gan_style.engine.contract import config_from_overrides
    from gan_style.methods.cyclegan import CycleGAN

    config = config_from_overrides(CycleGAN, "paper", {**TINY_CYCLEGAN, "train": train_base})
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
