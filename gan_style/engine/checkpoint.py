"""Checkpoint files: written once and atomically, read without executing pickled code, and
resumed from the newest intact one.

A training checkpoint is one ``torch.save`` file holding only tensors and plain Python values
(dicts, lists, tuples, numbers, strings), so ``torch.load(weights_only=True)`` reads it; a file
that holds anything else is refused, never loaded unsafely.

A save writes ``step_XXXXXXXX.pt`` to a temporary file in the same folder, flushes it to disk and
renames it into place, then points ``latest.pt`` at it with a hard link (also renamed into place):
the bytes are written once, and a crash at any moment leaves the previous checkpoints intact.
Temporary files that a killed process left behind are removed at the next save or resume.
Resuming reads ``latest.pt`` and falls back to the newest intact ``step_*.pt`` (saying which and
why) when ``latest.pt`` is missing, empty or truncated.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_style.errors import CheckpointError

FORMAT = "gan_style.checkpoint/1"
LATEST = "latest.pt"
SNAPSHOT_GLOB = "step_*.pt"
_TMP_SUFFIX = ".tmp"
_SNAPSHOT = re.compile(r"step_\d+\.pt")

log = logging.getLogger(__name__)


def snapshot_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temporary file and a rename: ``path`` is either the old
    file or the complete new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` name the same file as ``source`` (a hard link renamed into place); copies
    where the file system has no hard links."""
    tmp = _temporary(target)
    tmp.unlink()
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files that an interrupted save left in ``folder``."""
    removed = []
    for tmp in Path(folder).glob(f".*{_TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


def read_weights(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``, turning every failure into one clear
    ``CheckpointError``: missing, not a PyTorch file / truncated, or refused because it holds
    pickled objects other than tensors and plain values."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (an interrupted copy or save?); use another checkpoint")
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error) or "Weights only" in str(error):
            raise CheckpointError(
                f"{path} was refused: it holds pickled Python objects or code, not only tensors and plain values, "
                "and gan_style loads weights only. If it is yours, re-save just the weights "
                "(torch.save(model.state_dict(), path)) and use that file"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch weights file ({error}); use another file") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError) as error:
        # torch's own text goes on for lines; its first sentence says what failed.
        reason = str(error).split(". ")[0].splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint ({reason}); use another checkpoint") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A gan_style training checkpoint file (see ``read_weights`` for the errors)."""
    state = read_weights(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gan_style training checkpoint (no '{FORMAT}' marker)")
    return state


def checkpoint_folder(run: str | Path) -> Path:
    """The folder of a run's checkpoints: ``RUN/checkpoints``, or ``run`` itself without one."""
    run = Path(run).expanduser()
    return run / "checkpoints" if (run / "checkpoints").is_dir() else run


def snapshots(folder: str | Path) -> list[Path]:
    """The step snapshots of a checkpoint folder, oldest first (per-rank files excluded)."""
    return sorted(p for p in Path(folder).glob(SNAPSHOT_GLOB) if _SNAPSHOT.fullmatch(p.name))


def rank_file(checkpoint: Path, rank: int) -> Path:
    """Where process ``rank`` > 0 keeps its own state (RNGs, the method's) beside ``checkpoint``."""
    return checkpoint.with_name(f"{checkpoint.stem}.rank{rank}.pt")


def checkpoint_candidates(run: str | Path) -> list[Path]:
    """``latest.pt`` then the step snapshots, newest first."""
    folder = checkpoint_folder(run)
    return [folder / LATEST, *reversed(snapshots(folder))]


def load_run_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """(file, state) of a run folder's newest intact checkpoint, or of a checkpoint file.

    A missing or damaged ``latest.pt`` falls back to the newest snapshot that loads, with a warning
    that says which one and why. Orphaned temporary files of the folder are removed."""
    path = Path(path).expanduser()
    if path.is_file():
        return path, load_checkpoint(path, map_location)
    if not path.is_dir():
        raise CheckpointError(f"{path} does not exist; give a run folder or a checkpoint .pt file")
    remove_orphans(checkpoint_folder(path))
    problems: list[str] = []
    for candidate in checkpoint_candidates(path):
        if not candidate.exists():
            problems.append(f"{candidate.name} is missing")
            continue
        try:
            state = load_checkpoint(candidate, map_location)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        if problems:
            log.warning("using %s: %s", candidate, "; ".join(problems))
        return candidate, state
    if len(problems) <= 1:
        raise CheckpointError(f"{path} holds no checkpoint (checkpoints/{LATEST} or {SNAPSHOT_GLOB}); train first or give the right run folder")
    raise CheckpointError(f"{path} holds no intact checkpoint: {'; '.join(problems)}")


def rng_state() -> dict[str, Any]:
    """The global RNG states of this process, as checkpoint-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
