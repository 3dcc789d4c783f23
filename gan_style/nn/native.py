"""Small C kernels compiled on first use with the system's C compiler and loaded with ``ctypes``,
and C++ that uses PyTorch's own C++ interface (``c10``), compiled against the installed torch.

Optional by design: where no compiler is found, or it fails, :func:`compile_library` returns None
(logged once) and the callers keep their PyTorch path. The library is built for the CPU it runs
on (``-march=native``) and cached in ``native/`` under the package's cache directory
(``$GAN_STYLE_CACHE``, else ``$XDG_CACHE_HOME/gan_style``, else ``~/.cache/gan_style``), keyed
by the source, the flags, the compiler and the CPU's model and flags, so a home directory shared
by machines of different CPUs never loads one built for another.
``GAN_STYLE_NATIVE=0`` turns the kernels off.

It links the OpenMP runtime PyTorch has already loaded (``libgomp.so.1`` of Linux wheels, by its
soname), so the kernels share PyTorch's threads and ``torch.set_num_threads``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")


def _torch_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Compile and link flags for C++ against the running torch: its headers, its ``libc10`` (found
    again at load time by rpath: the copy the process has already loaded) and its C++ ABI."""
    import torch

    root = Path(torch.__file__).parent
    compile_flags = ("-O2", "-fPIC", "-shared", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
                     f"-I{root / 'include'}")
    return compile_flags, (f"-L{root / 'lib'}", "-lc10", f"-Wl,-rpath,{root / 'lib'}")


def _torch_version() -> str:
    import torch

    return torch.__version__


def enabled() -> bool:
    """False where ``GAN_STYLE_NATIVE`` is ``0``, ``false`` or ``off``."""
    return os.environ.get("GAN_STYLE_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    from gan_style.data.demo import default_cache_dir  # the one cache root of the package

    return default_cache_dir() / "native"


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags: what ``-march=native`` compiles for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keys = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in keys}))


def _compiler(language: str = "c") -> str | None:
    if language == "c++":
        return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def c_source(*names: str) -> str:
    """The files ``names`` of this package folder, one after the other: a kernel's source with the
    headers it shares in front (the build is keyed by the whole text, so a header change rebuilds)."""
    folder = Path(__file__).parent
    return "\n".join((folder / name).read_text() for name in names)


@functools.cache
def compile_library(name: str, source: str, language: Literal["c", "c++"] = "c") -> ctypes.CDLL | None:
    """``source`` compiled into a shared library and loaded, or None (logged) where that is not possible.
    ``language="c++"``: C++17 built against the installed torch's headers and ``libc10``."""
    if not enabled():
        return None
    compiler = _compiler(language)
    if compiler is None or platform.system() != "Linux":
        log.info("no %s compiler (or not Linux): %s runs its PyTorch path", language.upper(), name)
        return None
    flags, link_flags = (FLAGS, ()) if language == "c" else _torch_flags()
    against = _torch_version() if language == "c++" else ""  # c10's C++ interface changes between versions
    key = hashlib.sha256("\0".join([source, *flags, *link_flags, compiler, against, _cpu_identity()]).encode()).hexdigest()[:20]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
                c_file, built = Path(scratch) / f"{name}.{'c' if language == 'c' else 'cpp'}", Path(scratch) / f"{name}.so"
                c_file.write_text(source)
                command = [compiler, *flags, str(c_file), "-o", str(built), *link_flags]
                result = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if result.returncode:
                    log.warning("compiling %s failed (its PyTorch path runs instead): %s", name, result.stderr.strip()[-2000:])
                    return None
                os.replace(built, target)  # atomic: concurrent processes (DDP) each build, one wins
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("could not build %s in %s (its PyTorch path runs instead): %s", name, target.parent, error)
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        log.warning("could not load %s (its PyTorch path runs instead): %s", target, error)
        return None
