"""The one place that says which items make which batch on which process.

The trainer orders an epoch (a permutation drawn from (seed, epoch), or 0..n-1 for datasets that
set ``shuffle = False``) and cuts it into global batches of ``batch_size * world_size`` items;
process ``r`` takes the items ``r, r + W, r + 2W, ...`` of each global batch. Datasets whose items
must know their batch (SinCUT's crops of one batch share one zoom) ask ``batch_group``, which is
the same arithmetic read backwards.
"""

from __future__ import annotations

import math

import torch


def epoch_order(num_items: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The item order of one epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return list(range(num_items))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


def shard_batches(order: list[int], batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """This process's batches of an epoch. Every process gets the same number of batches (the
    order is padded by wrapping around, like DistributedSampler), and the last partial global
    batch is kept."""
    global_batch = batch_size * world_size
    num_batches = max(1, math.ceil(len(order) / global_batch))
    padded = (order * (num_batches * global_batch // max(1, len(order)) + 1))[: num_batches * global_batch]
    mine = padded[rank::world_size]
    return [mine[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)]


def batch_group(index: int, batch_size: int, world_size: int = 1) -> tuple[int, int]:
    """(group, slot) of item ``index`` of an unshuffled epoch: the number of the process batch it
    falls in (global batch * world_size + rank) and its place in that batch."""
    block, offset = divmod(index, batch_size * world_size)
    rank, slot = offset % world_size, offset // world_size
    return block * world_size + rank, slot
