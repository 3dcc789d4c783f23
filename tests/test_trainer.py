"""The generic trainer: exact resume, atomic checkpoints, schedules, logging outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import tiny_cyclegan_config
from gan_style.data.sharding import epoch_order, shard_batches
from gan_style.engine import checkpoint as checkpoint_module
from gan_style.engine import trainer as trainer_module
from gan_style.engine.checkpoint import load_checkpoint
from gan_style.engine.memory import HeapTrimmer
from gan_style.engine.trainer import Trainer
from gan_style.methods.cyclegan import CycleGAN

TRAIN = {"n_epochs": 1, "n_epochs_decay": 2, "log_every": 2, "image_every": 3, "save_every": 1000, "channels_last": True}


def tiny_config(**train):
    return tiny_cyclegan_config(TRAIN, **train)


def record(history):
    def on_step(step, logs):
        history[step] = {k: v.clone() for k, v in logs.items()}

    return on_step


def test_run_folder_has_logs_samples_and_checkpoint(tmp_path, demo_cache):
    trainer = Trainer(CycleGAN(tiny_config(max_steps=4)), tmp_path / "run", show_progress=False)
    trainer.fit()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "samples" / "step_00000003.png").is_file()
    assert (run / "checkpoints" / "latest.pt").is_file()
    assert (run / "checkpoints" / "step_00000004.pt").is_file()
    # The checkpoint is read without unpickling code.
    state = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert set(state["networks"]) == {"G_A", "G_B", "D_A", "D_B"}
    assert state["local"]["method"]["fake_A_pool"]["images"].shape[0] == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/G/G_A", "loss/G/cycle_A", "loss/G/idt_A", "loss/D/D_A", "loss/D/D_B", "D/D_A_real", "lr/G", "lr/D"} <= scalars
    assert "samples" in events.Tags()["images"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "latest.pt"
    checkpoint_module.atomic_torch_save({"format": checkpoint_module.FORMAT, "value": 1}, target)

    def crash(obj, fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(RuntimeError):
        checkpoint_module.atomic_torch_save({"format": checkpoint_module.FORMAT, "value": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_snapshots_are_pruned(tmp_path, demo_cache):
    trainer = Trainer(CycleGAN(tiny_config(max_steps=6, save_every=2, keep_checkpoints=2)), tmp_path, show_progress=False)
    trainer.fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == ["step_00000004.pt", "step_00000006.pt"]


def test_epoch_order_and_sharding():
    assert epoch_order(5, seed=0, epoch=1, shuffle=False) == [0, 1, 2, 3, 4]
    assert epoch_order(50, 0, 1, True) == epoch_order(50, 0, 1, True) != epoch_order(50, 0, 2, True)
    rank0 = shard_batches(list(range(7)), 2, 0, 2)
    rank1 = shard_batches(list(range(7)), 2, 1, 2)
    assert len(rank0) == len(rank1) == 2
    seen = {i for batch in rank0 + rank1 for i in batch}
    assert seen == set(range(7))


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_heap_trimmer_hands_free_heap_pages_back():
    trimmer = HeapTrimmer()
    if not trimmer.available:
        pytest.skip("the heap trimmer needs glibc (malloc_trim, mallinfo2)")
    blocks = [torch.ones(24_000) for _ in range(4000)]  # ~96 KB each: below glibc's mmap threshold, on the heap
    del blocks[:-1]  # the last block keeps the top of the heap, so glibc's own trimming cannot return the rest
    before = _resident_mb()
    assert trimmer.free_bytes() > 300 * 2**20
    assert trimmer()
    assert before - _resident_mb() > 250


def test_the_trainer_trims_the_heap_after_each_phase_when_asked(demo_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(HeapTrimmer, "__call__", lambda self: calls.append(1) or True)
    Trainer(CycleGAN(tiny_config(max_steps=2, trim_heap=True)), show_progress=False).fit()
    assert len(calls) == 4  # after the G and D phases of two iterations
    calls.clear()
    Trainer(CycleGAN(tiny_config(max_steps=2)), show_progress=False).fit()
    assert calls == []  # the default: never
    kept = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: kept.append(1) or True)
    Trainer(CycleGAN(tiny_config(max_steps=2, trim_heap=True, keep_heap=True)), show_progress=False).fit()
    assert kept == [1] and calls == []  # keeping the heap is the opposite of trimming it


def test_the_trainer_reuses_freed_pages_on_the_cpu_unless_told_not_to(demo_cache, monkeypatch):
    installs, releases = [], []
    monkeypatch.setattr(trainer_module, "reuse_freed_pages", lambda: installs.append(1) or True)
    monkeypatch.setattr(trainer_module, "release_freed_pages", lambda: releases.append(1) or 0)
    Trainer(CycleGAN(tiny_config(max_steps=1)), show_progress=False).fit()
    assert installs == [1] and releases == [1]  # installed before the kernel probe, the cache released at the end
    Trainer(CycleGAN(tiny_config(max_steps=1, reuse_pages=False)), show_progress=False)
    assert installs == [1]


_HEAP_PROBE = """
import ctypes, sys, torch
from gan_style.engine import memory
if sys.argv[1] == "keep":
    assert memory.keep_freed_memory()
libc = memory._glibc()
block = torch.ones(2**24)  # 64 MB: over glibc's largest mmap threshold
mapped = libc.mallinfo2().hblkhd
del block
print(mapped >= 2**26, libc.mallinfo2().fordblks >= 2**26)
"""


@pytest.mark.parametrize("choice", ["default", "keep"])
def test_keeping_freed_memory_serves_large_tensors_from_the_heap_and_keeps_them(choice):
    if not HeapTrimmer().available:
        pytest.skip("keeping the heap needs glibc (mallopt, mallinfo2)")
    # in a child process: the setting holds for a process's lifetime
    result = subprocess.run([sys.executable, "-c", _HEAP_PROBE, choice], capture_output=True, text=True, timeout=120, check=True)
    mapped_apart, kept_free_in_heap = result.stdout.split()
    # by default a 64 MB tensor gets its own mapping, returned when freed (fresh zeroed pages next
    # time); kept, it comes from the heap and its memory stays there for the next one
    assert (mapped_apart, kept_free_in_heap) == (("True", "False") if choice == "default" else ("False", "True"))
