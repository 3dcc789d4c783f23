"""The project's error types.

``UserError`` is a problem the user can fix (a bad option, file or folder). Its message names the
file or option and says what to do; the command line prints it as one ``error:`` line and exits
with status 2, without a traceback. Library callers catch it like any ``ValueError``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad option, file or folder; the message names it and the fix."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, truncated, not a checkpoint, or holding
    pickled code (refused, never loaded unsafely)."""
