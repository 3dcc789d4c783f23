"""Named random streams: every random draw of the data pipeline (and of a method's own
generators) comes from a ``torch.Generator`` seeded by a name, so it does not depend on which
process or DataLoader worker makes it, nor on anything drawn before it."""

from __future__ import annotations

import hashlib


def stream_seed(namespace: str, *parts: object) -> int:
    """A 64-bit seed for the stream named ``gan_style.<namespace>:<part>:<part>...``: the first 8
    bytes of its BLAKE2b, little-endian. A hash rather than arithmetic such as
    ``seed + epoch * N + index``, so that neighbouring items, epochs and seeds get unrelated streams."""
    text = f"gan_style.{namespace}:" + ":".join(str(part) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def epoch_and_index(index: int | tuple[int, int], current_epoch: int) -> tuple[int, int]:
    """A dataset index is ``i`` (of the epoch set by ``set_epoch``) or an explicit ``(epoch, i)``
    pair, which lets epochs work with persistent DataLoader workers."""
    if isinstance(index, tuple):
        return index
    return current_epoch, index
