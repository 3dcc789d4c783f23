"""Per-shape kernel choices timed at first use: PyTorch's way ("direct") or an alternative, for
the strided convolutions' weight gradients (``gan_style.nn.strided``, "im2col") and the image-side
convolutions' passes (``gan_style.nn.narrow``, "taps").

The first time a key (a pass of a layer shape, with the thread count) runs, both ways run twice,
alternating, and the faster keeps running for that key in this process. The choices are each
process's own: DDP replicas may choose differently (their gradients are averaged, so their weights
stay equal).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the alternative is chosen when it took less than this fraction of PyTorch's time: a margin over
#: the noise of two timings on a shared machine (SinCUT's small strided layers, timed 0.39 against
#: 0.45 ms, then ran no faster, and the step 1.6 % slower, with the 0.97 first used)
MIN_GAIN = 0.9


def best_of_alternating(candidates: Mapping[str, Callable[[], object]], rounds: int = 2) -> dict[str, float]:
    """Each candidate's best time (ms) over ``rounds`` calls, alternating: the first call of either
    may meet fresh pages. Results are dropped at once (two input gradients alive would raise the peak)."""
    timings: dict[str, float] = {}
    for _ in range(rounds):
        for name, candidate in candidates.items():
            start = time.perf_counter()
            candidate()
            timings[name] = min(timings.get(name, math.inf), (time.perf_counter() - start) * 1e3)
    return timings


class MeasuredChoices:
    """The verdicts of one kind of choice: ``alternative`` names the other way, ``describe`` turns
    a key into the text ``listing`` shows, ``rounds`` how many times each way runs to be timed."""

    def __init__(self, alternative: str, describe: Callable[[Hashable], str], rounds: int = 2):
        self.alternative, self.describe, self.rounds = alternative, describe, rounds
        self._timings: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def verdict(self, direct_ms: float, alternative_ms: float) -> str:
        return self.alternative if alternative_ms < direct_ms * MIN_GAIN else "direct"

    def chosen(self, key: Hashable) -> str | None:
        """The way this key's first run chose ("direct" or the alternative's name), None before it."""
        timings = self._timings.get(key)
        return None if timings is None else self.verdict(*timings)

    def run(self, key: Hashable, direct: Callable[[], T], alternative: Callable[[], T]) -> T:
        """``direct()`` or ``alternative()``, whichever this key's first run timed faster (both run
        ``rounds`` times then, alternating, and the faster once more for the result)."""
        timings = self._timings.get(key)
        if timings is None:
            measured = best_of_alternating({"direct": direct, self.alternative: alternative}, self.rounds)
            timings = measured["direct"], measured[self.alternative]
            with self._lock:
                self._timings[key] = timings
            logger.debug("%s: %s (direct %.1f ms, %s %.1f ms)", self.describe(key), self.verdict(*timings), timings[0],
                         self.alternative, timings[1])
        return (alternative if self.verdict(*timings) == self.alternative else direct)()

    def listing(self) -> dict[str, dict[str, float | str]]:
        """Every key measured in this process: its description to its timings (ms) and the kernel chosen."""
        with self._lock:
            items = list(self._timings.items())
        return {self.describe(key): {"direct_ms": round(direct, 2), f"{self.alternative}_ms": round(other, 2),
                                     "kernel": self.verdict(direct, other)} for key, (direct, other) in items}

    def forget(self) -> None:
        """Measure every key again at its next use (tests; a changed thread count is measured anyway)."""
        with self._lock:
            self._timings.clear()
