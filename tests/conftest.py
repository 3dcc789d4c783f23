"""Shared test fixtures: paths to ../shared (real images, golden reference files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
