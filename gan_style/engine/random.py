"""Named random streams lent to a method's phases: ``ctx.rng("patch_ids")``.

Each stream is a CPU ``torch.Generator`` seeded from (train.seed, process rank, name), so every
process draws its own numbers, nothing depends on the order in which streams are first used, and
the states are saved in each process's part of a checkpoint and restored on resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gan_style.data.seeds import stream_seed


class RandomStreams:
    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = seed, rank
        self._streams: dict[str, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Generator:
        stream = self._streams.get(name)
        if stream is None:
            stream = torch.Generator().manual_seed(stream_seed("stream", self.seed, self.rank, name))
            if name in self._pending:
                stream.set_state(self._pending.pop(name))
            self._streams[name] = stream
        return stream

    def state_dict(self) -> dict[str, Any]:
        states = {name: stream.get_state() for name, stream in self._streams.items()}
        return {**self._pending, **states}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        # Streams not created yet take their saved state when first used.
        self._streams.clear()
        self._pending = dict(state)
