"""Large CPU tensors on the pages of freed ones (gan_style.engine.memory.reuse_freed_pages,
page_reuse.cpp): freed blocks are served again without fresh pages, memory is never mapped beyond
the live tensors' peak plus its slack, a repeating sequence settles with no merge, and every way
PyTorch allocates and frees (tensors, oneDNN's raw pointers, small blocks, forked workers) still works.

The allocator is process-wide once installed: the rest of the suite runs on it too, as training
does (train.reuse_pages is on by default)."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from gan_style.engine import memory
from gan_style.engine.memory import (
    PAGE_REUSE_MAX_SLACK_BYTES,
    PAGE_REUSE_MIN_BYTES,
    mapped_limit,
    page_reuse_counters,
    release_freed_pages,
    reuse_freed_pages,
    set_page_reuse_max_slack,
    set_page_reuse_min_bytes,
)

PAGE = 4096
UNIT = PAGE_REUSE_MIN_BYTES  # the smallest block served from freed pages; the sizes below are its multiples


@pytest.fixture
def reuse():
    """The allocator installed, with no free block kept (other tests' leftovers released)."""
    if not reuse_freed_pages():
        pytest.skip("the page-reusing allocator cannot be built here (not Linux, no C++ compiler, or GAN_STYLE_NATIVE=0)")
    release_freed_pages()
    yield page_reuse_counters
    set_page_reuse_max_slack(PAGE_REUSE_MAX_SLACK_BYTES)  # as installed, whatever a test set


@pytest.fixture
def strict(reuse):
    """No slack: a request that no free block holds merges the free blocks, whatever room is left."""
    set_page_reuse_max_slack(0)
    return reuse


def _bytes(n: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8)


def _all(t: torch.Tensor, value: int) -> bool:
    """Every page of ``t`` holds ``value`` (one byte per page: a small comparison, which takes no
    large block of its own)."""
    return bool((t[::PAGE] == value).all()) and int(t[-1]) == value


def _random_sequence(seed: int) -> tuple[list[int], list[float | None]]:
    """60 block sizes of 1-4 units, and after each allocation whether to free a random live block
    (the fraction of the list to pick it at) or not (None)."""
    rng = random.Random(seed)
    sizes = [UNIT + rng.randrange(3 * UNIT) for _ in range(60)]
    return sizes, [rng.random() if rng.random() < 0.6 else None for _ in sizes]


def _delta(before, after, *names):
    return tuple(getattr(after, name) - getattr(before, name) for name in names)


def test_a_freed_block_is_served_again_with_its_pages(reuse):
    """Same size: the same block, its bytes as they were (no fresh, zeroed page)."""
    block = _bytes(2 * UNIT).fill_(7)
    address = block.data_ptr()
    del block
    before = reuse()
    again = _bytes(2 * UNIT)
    after = reuse()
    assert again.data_ptr() == address and _all(again, 7)
    assert _delta(before, after, "exact_calls", "fresh_bytes", "reused_bytes") == (1, 0, 2 * UNIT)


def test_a_smaller_request_splits_a_freed_block_and_a_larger_one_merges_them(strict):
    """A head served, the tail kept free; then both moved together into one larger block, their
    resident pages (with their bytes) in place, only the rest fresh."""
    reuse = strict
    block = _bytes(4 * UNIT).fill_(3)
    address = block.data_ptr()
    del block
    before = reuse()
    smaller = _bytes(3 * UNIT - 100)  # rounded up to pages
    after = reuse()
    assert smaller.data_ptr() == address and _all(smaller, 3)
    assert _delta(before, after, "split_calls", "released_bytes", "fresh_bytes", "mapped_bytes", "free_bytes") == (1, 0, 0, 0, -3 * UNIT)
    del smaller
    before = reuse()
    larger = _bytes(5 * UNIT)
    after = reuse()
    assert _all(larger[: 4 * UNIT], 3)  # the head's and the tail's pages, moved side by side
    assert _delta(before, after, "merged_calls", "grown_bytes", "reused_bytes", "fresh_bytes", "free_bytes") == (1, UNIT, 4 * UNIT, 0, -4 * UNIT)
    larger[4 * UNIT :].fill_(5)
    assert int(larger.sum()) == 3 * 4 * UNIT + 5 * UNIT


def test_freed_neighbours_join_into_the_block_they_were_split_from(reuse):
    """Three heads cut from one freed block, freed out of order (the middle one last, so it joins
    the free blocks on both sides): the whole block is served again as it was, with no merge."""
    whole = _bytes(6 * UNIT).fill_(9)
    address = whole.data_ptr()
    del whole
    parts = [_bytes(2 * UNIT) for _ in range(3)]
    assert [t.data_ptr() - address for t in parts] == [0, 2 * UNIT, 4 * UNIT]
    parts[1].fill_(4)
    for index in (0, 2, 1):
        parts[index] = None
    assert reuse().free_bytes >= 6 * UNIT
    before = reuse()
    again = _bytes(6 * UNIT)
    after = reuse()
    assert again.data_ptr() == address and _all(again[: 2 * UNIT], 9) and _all(again[2 * UNIT : 4 * UNIT], 4)
    assert _delta(before, after, "exact_calls", "merged_calls", "fresh_bytes", "grown_bytes") == (1, 0, 0, 0)


@pytest.mark.parametrize("slack", [0, PAGE_REUSE_MAX_SLACK_BYTES])
def test_memory_is_mapped_only_up_to_the_live_peak(reuse, slack):
    """Random sizes, allocated and freed in a random order, twice: mapped = live + free at every
    moment, never more than the most ever live plus the slack, live tensors' bytes intact. Without
    slack, the second time no fresh page at all (with it, a request that no free block holds may
    still take fresh pages within the slack: test_a_repeating_sequence_settles_with_no_merge)."""
    set_page_reuse_max_slack(slack)
    base = reuse()
    sizes, frees = _random_sequence(0)
    most = 0

    def run() -> None:
        nonlocal most
        live: list[tuple[torch.Tensor, int]] = []
        for i, (size, free) in enumerate(zip(sizes, frees)):
            live.append((_bytes(size).fill_(i % 251), i % 251))
            in_use = sum(-(-t.numel() // PAGE) * PAGE for t, _ in live)
            most = max(most, in_use)
            now = reuse()
            assert now.mapped_bytes == now.live_bytes + now.free_bytes
            assert now.live_bytes - base.live_bytes == in_use
            assert now.peak_live_bytes == max(base.peak_live_bytes, base.live_bytes + most)
            assert now.mapped_bytes <= mapped_limit(now.peak_live_bytes)  # with the slack set above
            assert all(_all(t, value) for t, value in live)  # pages moved never belong to a live tensor
            if free is not None:
                live.pop(int(free * len(live)))

    run()
    first = reuse()
    run()
    second = reuse()
    new = [_delta(a, b, "fresh_bytes", "grown_bytes", "reused_bytes") for a, b in ((base, first), (first, second))]
    assert new[0][2] > 0
    if slack == 0:
        assert new[1][0] + new[1][1] == 0  # the same peak again: no fresh page
    assert release_freed_pages() > 0 and reuse().free_bytes == 0


def test_a_repeating_sequence_settles_with_no_merge(reuse):
    """A training step repeats its requests. With the slack, fresh pages fill what no free block
    holds the first time, and from the second run on every request finds a free block: no merge
    (no mremap). Without it the free blocks are merged and split again on every run.

    The slack is an eighth of the live peak, at most 64 MB: a block held live (as a model's weights
    and a step's saved activations are), never touched so never resident, gives the whole 64 MB;
    release_freed_pages starts the peak again, so no earlier test's peak sizes it."""
    held = _bytes(8 * PAGE_REUSE_MAX_SLACK_BYTES)  # the fixture released the freed pages: the peak is this test's
    assert mapped_limit(reuse().peak_live_bytes) - reuse().peak_live_bytes == PAGE_REUSE_MAX_SLACK_BYTES
    sizes, frees = _random_sequence(1)

    def merges_per_run(runs: int) -> list[int]:
        counts = []
        for _ in range(runs):
            before = reuse()
            live = []
            for size, free in zip(sizes, frees):
                live.append(_bytes(size))
                if free is not None:
                    live.pop(int(free * len(live)))
            del live
            counts.append(reuse().merged_calls - before.merged_calls)
        return counts

    assert merges_per_run(3)[1:] == [0, 0]
    set_page_reuse_max_slack(0)
    release_freed_pages()
    assert min(merges_per_run(3)[1:]) > 0
    del held
    release_freed_pages()


def test_releasing_the_freed_pages_starts_the_peak_again(reuse):
    """A later run's slack is sized by its own peak, not by a larger earlier run's."""
    earlier = _bytes(16 * UNIT)
    del earlier
    assert reuse().peak_live_bytes >= reuse().live_bytes + 16 * UNIT
    assert release_freed_pages() >= 16 * UNIT
    after = reuse()
    assert (after.peak_live_bytes, after.peak_mapped_bytes, after.free_bytes) == (after.live_bytes, after.mapped_bytes, 0)


def test_small_blocks_stay_with_pytorchs_allocator(reuse):
    before = reuse()
    small = [torch.ones(UNIT // 8) for _ in range(20)]  # half the threshold each (4-byte floats)
    assert sum(t.sum().item() for t in small) == 20 * UNIT // 8
    del small
    after = reuse()
    assert _delta(before, after, "fresh_calls", "exact_calls", "split_calls", "merged_calls", "live_bytes") == (0, 0, 0, 0, 0)


def test_it_can_be_bypassed_and_restored_for_paired_timings(reuse):
    """eval/conv_kernel_ab.py --compare pages: off, every block goes to PyTorch's allocator, and
    the blocks handed out before are still freed through it."""
    kept = _bytes(UNIT)
    set_page_reuse_min_bytes(None)
    try:
        before = reuse()
        bypassed = _bytes(2 * UNIT).fill_(1)
        del kept
        after = reuse()
        assert _delta(before, after, "live_bytes", "fresh_calls", "free_bytes") == (-UNIT, 0, UNIT)
        assert int(bypassed.sum()) == 2 * UNIT
    finally:
        set_page_reuse_min_bytes(PAGE_REUSE_MIN_BYTES)
    served = _bytes(UNIT)
    assert reuse().live_bytes - after.live_bytes == UNIT and served.numel() == UNIT


def test_onednn_convolutions_allocate_and_free_through_it(reuse):
    """oneDNN takes its buffers with raw_allocate and frees them through raw_deleter (large ones
    from this allocator, small ones from the one it replaced): the values are still the
    convolution's."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 128, 128, generator=generator).contiguous(memory_format=torch.channels_last).requires_grad_()  # 16 MB
    weight = (torch.randn(64, 64, 3, 3, generator=generator) / 24).contiguous(memory_format=torch.channels_last).requires_grad_()
    for _ in range(2):
        out = F.conv2d(x, weight, padding=1)
        grad_x, grad_w = torch.autograd.grad(out.square().sum(), (x, weight))
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    out64 = F.conv2d(x64, w64, padding=1)
    grads64 = torch.autograd.grad(out64.square().sum(), (x64, w64))
    for ours, exact in zip((out, grad_x, grad_w), (out64, *grads64)):
        assert ((ours.double() - exact).norm() / exact.norm()).item() < 1e-5
    assert reuse().reused_bytes > 0


class _LargeItems(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.full((UNIT // 2,), float(i))  # 2 UNIT bytes each: this allocator's, in the worker


def test_forked_dataloader_workers_allocate_with_it(reuse):
    loader = torch.utils.data.DataLoader(_LargeItems(), batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = [batch for batch in loader]
    assert [batch[:, 0].tolist() for batch in batches] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_it_is_built_with_the_cxx_compiler_and_falls_back_without_one(tmp_path, monkeypatch, caplog):
    """The C++ build against the installed torch is cached like the C kernels; without a compiler
    (or with GAN_STYLE_NATIVE=0) none is built and PyTorch's allocator stays."""
    from gan_style.nn import native

    monkeypatch.setenv("GAN_STYLE_CACHE", str(tmp_path))
    source = '#include <c10/core/CPUAllocator.h>\nextern "C" int gs_has_allocator() { return c10::GetCPUAllocator() != nullptr; }\n'
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger="gan_style.nn.native"):
        assert native.compile_library("probe_cxx_missing", source, language="c++") is None
    assert "compiling" in caplog.text or "could not build" in caplog.text
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("CXX", shutil.which("c++") or shutil.which("g++"))
    library = native.compile_library("probe_cxx", source, language="c++")
    assert library is not None and library.gs_has_allocator() == 1
    assert [p.name.startswith("probe_cxx-") for p in (tmp_path / "native").iterdir()] == [True]
    memory._page_reuse_library.cache_clear()
    monkeypatch.setattr(memory, "_installed", False)
    monkeypatch.setenv("GAN_STYLE_NATIVE", "0")
    assert reuse_freed_pages() is False
    memory._page_reuse_library.cache_clear()
