"""Tests of the dataset downloader against a loopback HTTP server (only 127.0.0.1 is contacted)."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_style.data import CYCLEGAN_DATASETS, DatasetError, download_dataset
from gan_style.data.download import main

REPO_ROOT = Path(__file__).resolve().parent.parent
NAME = "mini"  # a real dataset name, served locally


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``state.files`` with optional single-range support (``bytes=N-``)."""

    state: ServerState  # set on the per-test subclass

    def do_GET(self) -> None:
        range_header = self.headers.get("Range")
        self.state.requests.append((self.path, range_header))
        body = self.state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and self.state.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.state.cut_after is not None:
            payload = payload[: self.state.cut_after]
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment must not intercept the loopback requests.
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (_RangeHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _dataset_zip(top: str | None = NAME) -> tuple[bytes, dict[str, bytes]]:
    """A zip like the CycleGAN ones: <top>/trainA/*.png, <top>/trainB/*.png (and macOS junk)."""
    contents = {f"{domain}/{index}.png": _png_bytes(seed) for seed, (domain, index) in enumerate(
        [("trainA", 0), ("trainA", 1), ("trainB", 0), ("trainB", 1)]
    )}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for relative, data in contents.items():
            archive.writestr(f"{top}/{relative}" if top else relative, data)
        archive.writestr(f"__MACOSX/{top or 'x'}/._0.png", b"resource fork")
    return buffer.getvalue(), contents


def _assert_extracted(folder: Path, contents: dict[str, bytes]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["trainA", "trainB"]
    for relative, data in contents.items():
        assert (folder / relative).read_bytes() == data


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name != NAME)


def test_download_extracts_cyclegan_layout(tmp_path: Path, server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gan_style")
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    dest = tmp_path / "datasets"
    result = download_dataset(NAME, dest_dir=dest, base_url=url, progress=False)
    assert result == dest / NAME
    _assert_extracted(result, contents)
    assert _leftovers(dest) == []  # no zip, no .part, no staging folder
    assert state.requests == [(f"/{NAME}.zip", None)]
    assert str(result) in caplog.text

    # A second call finds the dataset and does not download again.
    assert download_dataset(NAME, dest_dir=dest, base_url=url, progress=False) == result
    assert len(state.requests) == 1


def test_archive_without_top_folder(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip(top=None)
    state.files[f"/{NAME}.zip"] = archive
    result = download_dataset(NAME, dest_dir=tmp_path, base_url=url + "/", progress=False)
    _assert_extracted(result, contents)


def test_resume_sends_range_and_gives_intact_result(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    already = len(archive) // 3
    (tmp_path / f"{NAME}.zip.part").write_bytes(archive[:already])
    download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=True)  # with a progress bar
    assert state.requests == [(f"/{NAME}.zip", f"bytes={already}-")]
    _assert_extracted(tmp_path / NAME, contents)
    assert _leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_scratch(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    state.honour_range = False
    (tmp_path / f"{NAME}.zip.part").write_bytes(b"stale bytes from another file")
    download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    assert state.requests[0][1] == "bytes=29-"  # it asked to resume, got 200, and started over
    _assert_extracted(tmp_path / NAME, contents)


def test_complete_partial_file_is_used(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    (tmp_path / f"{NAME}.zip.part").write_bytes(archive)  # the server answers 416
    download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    _assert_extracted(tmp_path / NAME, contents)


def test_interrupted_download_is_resumed_by_the_next_call(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    state.cut_after = 100
    with pytest.raises(DatasetError, match="resume"):
        download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    partial = tmp_path / f"{NAME}.zip.part"
    assert partial.read_bytes() == archive[:100]
    assert not (tmp_path / NAME).exists() and not (tmp_path / f"{NAME}.zip").exists()

    state.cut_after = None
    download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    assert state.requests[-1][1] == "bytes=100-"
    _assert_extracted(tmp_path / NAME, contents)


def test_sha256_mismatch_keeps_no_corrupt_file(tmp_path: Path, server) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    wrong = "0" * 64
    with pytest.raises(DatasetError, match="SHA-256 mismatch") as error:
        download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False, sha256=wrong)
    assert hashlib.sha256(archive).hexdigest() in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no zip, no .part, no dataset folder

    right = hashlib.sha256(archive).hexdigest().upper()  # case does not matter
    download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False, sha256=right)
    _assert_extracted(tmp_path / NAME, contents)


def test_unknown_name_lists_known_names(tmp_path: Path, server) -> None:
    url, state = server
    with pytest.raises(DatasetError) as error:
        download_dataset("vangogh2monet", dest_dir=tmp_path, base_url=url)
    message = str(error.value)
    assert "vangogh2monet" in message and all(name in message for name in CYCLEGAN_DATASETS)
    assert state.requests == []


def test_http_error_and_bad_zip(tmp_path: Path, server) -> None:
    url, state = server
    with pytest.raises(DatasetError, match="HTTP 404"):
        download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    state.files[f"/{NAME}.zip"] = b"this is not a zip archive"
    with pytest.raises(DatasetError, match="not a valid zip"):
        download_dataset(NAME, dest_dir=tmp_path, base_url=url, progress=False)
    assert _leftovers(tmp_path) == [] and not (tmp_path / NAME).exists()


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "mini/../../evil.txt"])
def test_archive_members_cannot_escape(tmp_path: Path, server, member: str) -> None:
    url, state = server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mini/trainA/0.png", _png_bytes(0))
        archive.writestr(zipfile.ZipInfo(member), b"owned")
    state.files[f"/{NAME}.zip"] = buffer.getvalue()
    dest = tmp_path / "deep" / "datasets"
    with pytest.raises(DatasetError, match="outside"):
        download_dataset(NAME, dest_dir=dest, base_url=url, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (dest / NAME).exists()


def test_main_cli(tmp_path: Path, server, capsys: pytest.CaptureFixture[str]) -> None:
    url, state = server
    archive, contents = _dataset_zip()
    state.files[f"/{NAME}.zip"] = archive
    assert main([NAME, "--dest", str(tmp_path), "--base-url", url, "--quiet"]) == 0
    _assert_extracted(tmp_path / NAME, contents)
    capsys.readouterr()

    assert main(["horse2cat", "--dest", str(tmp_path), "--base-url", url]) == 2
    assert "horse2zebra" in capsys.readouterr().err
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(CYCLEGAN_DATASETS)
    assert main([NAME, "--dest", str(tmp_path), "--sha256", "xyz"]) == 2


def test_datasets_script_runs_from_a_checkout() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "datasets" / "download.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT / "datasets",
    )
    assert completed.returncode == 0, completed.stderr
    assert "vangogh2photo" in completed.stdout.split()
