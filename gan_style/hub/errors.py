"""Errors of the official-checkpoint importers."""

from __future__ import annotations

from gan_style.errors import CheckpointError


class LayoutMismatch(Exception):
    """A state dict does not fit one known layout; ``reason`` says what did not match."""

    def __init__(self, layout: str, reason: str):
        super().__init__(f"{layout}: {reason}")
        self.layout = layout
        self.reason = reason


class CheckpointLayoutError(CheckpointError):
    """No known layout fits a checkpoint. The message lists, per layout tried, what did not match."""
