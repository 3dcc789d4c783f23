"""Download the public CycleGAN datasets from their authors' server.

Usage: ``python datasets/download.py vangogh2photo`` (or ``gan-style download vangogh2photo``),
which leaves ``datasets/vangogh2photo/{trainA,trainB,testA,testB}``.

The download is resumable (an interrupted run leaves ``<name>.zip.part``; running again
continues it with an HTTP Range request), checked against the announced size and, when given,
a SHA-256, and extracted without letting any archive member escape the target folder. No
checksums of the official archives are bundled: none could be verified when this was written,
so pass ``--sha256`` if you have one you trust.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from .images import DatasetError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets"

#: The archives offered by the reference download script (plus CUT's grumpifycat).
#: mini_pix2pix and mini_colorization are laid out for pix2pix / colorization (train/, test/),
#: not as trainA/trainB.
CYCLEGAN_DATASETS: tuple[str, ...] = (
    "apple2orange",
    "summer2winter_yosemite",
    "horse2zebra",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "cityscapes",
    "facades",
    "iphone2dslr_flower",
    "ae_photos",
    "grumpifycat",
    "mini",
    "mini_pix2pix",
    "mini_colorization",
)

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60
_USER_AGENT = "gan_style-dataset-downloader"


def dataset_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{name}.zip"


def download_dataset(
    name: str,
    dest_dir: str | os.PathLike[str] = "datasets",
    base_url: str = DEFAULT_BASE_URL,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Download and extract dataset ``name`` into ``<dest_dir>/<name>`` and return that folder.

    Does nothing if the folder already exists and is not empty. Raises :class:`DatasetError`
    for an unknown name, a failed or incomplete download (the partial file is kept, so running
    again resumes), a SHA-256 mismatch (the download is deleted) or an unsafe archive.
    """
    if name not in CYCLEGAN_DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}. Known datasets: {', '.join(CYCLEGAN_DATASETS)}.")
    expected_sha256 = _normalise_sha256(sha256)
    dest = Path(dest_dir).expanduser()
    target = dest / name
    if target.is_dir() and any(target.iterdir()):
        log.info("%s is already in %s; delete that folder to download it again.", name, target)
        return target

    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.zip"
    if archive.exists():
        # Only complete, verified downloads are renamed to .zip, e.g. by a run that then failed
        # to extract; no need to fetch it again.
        _check_sha256(archive, expected_sha256, delete_on_mismatch=True)
    else:
        partial = dest / f"{name}.zip.part"
        url = dataset_url(name, base_url)
        log.info("downloading %s to %s", url, partial)
        _download_resumable(url, partial, progress=progress, label=name)
        _check_sha256(partial, expected_sha256, delete_on_mismatch=True)
        os.replace(partial, archive)

    _extract_zip(archive, target)
    archive.unlink()
    subfolders = sorted(p.name for p in target.iterdir() if p.is_dir())
    log.info("dataset %s is ready in %s (sub-folders: %s)", name, target, ", ".join(subfolders) or "none")
    return target


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise DatasetError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}.")
    return digest


def _check_sha256(path: Path, expected: str | None, delete_on_mismatch: bool) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected:
        if delete_on_mismatch:
            path.unlink()
        raise DatasetError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. The file "
            f"{'was deleted' if delete_on_mismatch else 'is kept'}; check the checksum or the "
            f"server and run again."
        )


def _download_resumable(url: str, partial: Path, progress: bool, label: str) -> None:
    """Fetch ``url`` into ``partial``, continuing from its current size if it exists."""
    # At most two requests: the second only when the server refused to resume, from scratch.
    for _ in range(2):
        offset = partial.stat().st_size if partial.exists() else 0
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
        except urllib.error.HTTPError as error:
            with error:
                if error.code == 416 and offset:
                    # "Range Not Satisfiable": the partial file is complete already, or stale.
                    _, total = _parse_content_range(error.headers.get("Content-Range", ""))
                    if total == offset:
                        return
                    partial.unlink()
                    continue
                raise DatasetError(
                    f"Download of {url} failed: HTTP {error.code} {error.reason}. Check the dataset "
                    f"name and --base-url."
                ) from error
        except (urllib.error.URLError, OSError) as error:
            raise DatasetError(
                f"Cannot reach {url}: {getattr(error, 'reason', error)}. Check the network connection "
                f"or --base-url{'; the partial download is kept and resumed next time' if offset else ''}."
            ) from error

        with response:
            if offset and response.status == 206:
                start, total = _parse_content_range(response.headers.get("Content-Range", ""))
                if start != offset:
                    partial.unlink()  # a range we did not ask for: start again cleanly
                    continue
                append = True
            else:
                # 200: a fresh download, or a server that ignores Range and sends everything.
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                offset, append = 0, False
            with partial.open("ab" if append else "wb") as file:
                _stream(response, file, url, partial, offset, total, progress, label)

        size = partial.stat().st_size
        if total is not None and size != total:
            raise DatasetError(
                f"Download of {url} ended after {size} of {total} bytes. Run the same command again "
                f"to resume from {partial}."
            )
        return
    raise DatasetError(f"The server for {url} did not honour the resume request twice; delete {partial} and retry.")


def _stream(
    response: http.client.HTTPResponse,
    file: BinaryIO,
    url: str,
    partial: Path,
    offset: int,
    total: int | None,
    progress: bool,
    label: str,
) -> None:
    with tqdm(
        total=total,
        initial=offset,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        disable=not progress,
    ) as bar:
        try:
            while chunk := response.read(_CHUNK_BYTES):
                file.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as error:
            file.flush()
            raise DatasetError(
                f"Download of {url} was interrupted ({type(error).__name__}: {error}). Run the same "
                f"command again to resume from {partial}."
            ) from error


def _parse_content_range(header: str) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` -> (100, 1000); ``"bytes */1000"`` -> (None, 1000)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start is not None else None, int(total) if total != "*" else None)


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` so that its content ends up in ``target``.

    The CycleGAN archives hold one top folder (``vangogh2photo/trainA/...``); that folder
    becomes ``target``. An archive with several top-level entries is extracted into ``target``
    as is. Members with absolute paths or ``..`` are rejected before anything is written.
    Extraction happens in a temporary sibling folder that is renamed at the end, so ``target``
    never holds a half-extracted dataset.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not _is_junk(m.filename)]
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extracting-", dir=target.parent))
            try:
                root = staging.resolve()
                for member in members:
                    _check_member_path(member.filename, root, archive)
                zipped.extractall(staging, members)
                top_level = {PurePosixPath(m.filename).parts[0] for m in members}
                single_top = staging / next(iter(top_level)) if len(top_level) == 1 else None
                source = single_top if single_top is not None and single_top.is_dir() else staging
                if target.exists():
                    target.rmdir()  # only an empty folder gets here (see download_dataset)
                os.rename(source, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except zipfile.BadZipFile as error:
        archive.unlink()
        raise DatasetError(
            f"{archive} is not a valid zip archive ({error}); it was deleted. Run the command again to "
            f"download it afresh."
        ) from error


def _is_junk(member_name: str) -> bool:
    # macOS resource forks that some archives carry.
    parts = PurePosixPath(member_name).parts
    return not parts or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store"


def _check_member_path(member_name: str, root: Path, archive: Path) -> None:
    path = PurePosixPath(member_name.replace("\\", "/"))
    escapes = (
        path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])  # a Windows drive such as C:
        or not (root / path).resolve().is_relative_to(root)
    )
    if escapes:
        raise DatasetError(
            f"Refusing to extract {archive}: member {member_name!r} would be written outside "
            f"{root}. The archive is not a genuine dataset archive; delete it."
        )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command line: ``download NAME [--dest DIR] [--base-url URL] [--sha256 HEX]``.

    Returns the exit status (0 on success), printing errors rather than raising them.
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Download a public CycleGAN dataset (the CycleGAN authors' data, for research use).",
        epilog=f"Datasets: {', '.join(CYCLEGAN_DATASETS)}.",
    )
    parser.add_argument("name", nargs="?", help="dataset to download, e.g. vangogh2photo")
    parser.add_argument("--dest", default="datasets", help="folder that receives <name>/ (default: datasets)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"server folder (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--sha256", default=None, help="expected SHA-256 of the zip archive (optional)")
    parser.add_argument("--list", action="store_true", help="print the known dataset names and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(CYCLEGAN_DATASETS))
        return 0
    if args.name is None:
        parser.error(f"name a dataset: {', '.join(CYCLEGAN_DATASETS)}")
    try:
        target = download_dataset(args.name, args.dest, base_url=args.base_url, progress=not args.quiet, sha256=args.sha256)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"dataset {args.name} is in {target}")
    return 0
