"""Load inertia's fused CPU kernels; build the one that can only be built at run time.

Two front ends share one pipeline (``_sgd_core.h``):

- ``_kernels.c``, the Python extension ``inertia._kernels`` for NumPy arrays and CPU torch
  tensors (:func:`load`, driven by :mod:`inertia.engine.host` for every face). It is compiled
  when the package is built (``setup.py``; ``pip install`` and ``pip wheel`` do it once), never
  at run time. It records the digest of the sources it was built from, and is loaded only when
  that matches the installed sources (a stale in-place build of a checkout is not run).
- ``_xla_kernels.c``, an XLA FFI handler that JAX's jitted step calls on the CPU
  (:func:`load_xla`). It needs the headers of the user's jaxlib, so it is compiled on first use
  with the machine's C compiler (``$CC``, else Python's, else ``cc``; GCC or clang) and kept in
  a private cache: ``$INERTIA_CACHE_DIR``, else ``$XDG_CACHE_HOME/inertia``, else
  ``~/.cache/inertia``. The cache is used only when it belongs to this user and no one else
  can write to it (it is created 0700). A build's file name carries the SHA-256 of its bytes,
  checked before the file is loaded: a truncated, emptied or replaced file is deleted and
  built again, never loaded. Builds go through a temporary file renamed into place, so
  concurrent first uses never see half a file; temporary files of builds that died are
  removed. The cache key covers the sources, the compiler, the flags, the CPU and jaxlib's
  version.

Where a kernel is unavailable every step still runs, on the reference path, and inertia warns
once (:class:`PerformanceWarning`) with the reason and the fix; :func:`unavailable_reason` and
:func:`xla_unavailable_reason` say why, and ``inertia doctor`` prints it all.
``INERTIA_KERNELS=0`` turns both kernels off, silently.

Example:
    >>> from inertia import kernels
    >>> module = kernels.load()
    >>> module is None or hasattr(module, "step")
    True
"""

from __future__ import annotations

import hashlib
import importlib
import os
import platform
import re
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from inertia import kernel_build
from inertia._processes import process_exists

__all__ = [
    "load", "load_xla", "unavailable_reason", "xla_unavailable_reason", "cache_dir", "thread_count",
    "PerformanceWarning", "known_missing", "private_cache_problem",
]


class PerformanceWarning(UserWarning):
    """A step takes a slower path than it could: a kernel is missing, with the reason and the fix."""


_lock = threading.Lock()
_loaded: Optional[ModuleType] = None
_reason: Optional[str] = None
_tried = False
_xla_loaded: Optional[Any] = None
_xla_reason: Optional[str] = None
_xla_tried = False
_DISABLED = "disabled by INERTIA_KERNELS"
# A temporary build file whose process is gone, or older than this, is left over from a build
# that died (a kill, a full disk): it is removed.
_STALE_TEMPORARY_S = 3600.0


def cache_dir() -> Path:
    """Where run-time builds (the XLA handler) are kept."""
    explicit = os.environ.get("INERTIA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "inertia"


def thread_count() -> int:
    """Threads a kernel call uses: ``$INERTIA_NUM_THREADS``, else the CPUs this process may run on."""
    explicit = os.environ.get("INERTIA_NUM_THREADS")
    if explicit:
        try:
            return max(1, int(explicit))
        except ValueError:
            raise ValueError(f"INERTIA_NUM_THREADS must be an integer. Received: {explicit!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def unavailable_reason() -> Optional[str]:
    """None when the extension loads; otherwise why it does not (after a :func:`load` attempt)."""
    load()
    return _reason


def xla_unavailable_reason() -> Optional[str]:
    """None when the XLA handler loads; otherwise why it does not (after a :func:`load_xla` attempt)."""
    load_xla()
    return _xla_reason


def _disabled() -> bool:
    return os.environ.get("INERTIA_KERNELS", "1").strip().lower() in ("0", "false", "off", "no")


class _Unavailable(Exception):
    pass


def _warn_slow(what: str, reason: str) -> None:
    warnings.warn(f"inertia: {what} is unavailable, so steps take the slower reference path: {reason} "
                  "(`inertia doctor` shows what inertia found; INERTIA_KERNELS=0 silences this)",
                  PerformanceWarning, stacklevel=_first_frame_outside_inertia())


def _first_frame_outside_inertia() -> int:
    """The ``stacklevel`` that points the warning at the user's line that stepped."""
    import sys

    package = str(Path(__file__).resolve().parent) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


# ---- the extension, built with the package --------------------------------------------------
def load() -> Optional[ModuleType]:
    """The compiled kernel module ``inertia._kernels``; None where it is unavailable (then one
    :class:`PerformanceWarning` says why, unless ``INERTIA_KERNELS=0``)."""
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            try:
                _loaded = _import_extension()
            except _Unavailable as error:
                _reason = str(error)
            except Exception as error:  # whatever goes wrong, steps take the reference path
                _reason = f"loading the compiled kernel failed: {type(error).__name__}: {error}"
            _tried = True
            if _reason is not None and _reason != _DISABLED:
                _warn_slow("the compiled kernel (inertia._kernels)", _reason)
    return _loaded


def _import_extension() -> ModuleType:
    if _disabled():
        raise _Unavailable(_DISABLED)
    try:
        module = _extension_module()
    except ImportError as error:
        if not _extension_files():
            raise _Unavailable(
                "inertia was installed without its compiled kernel (the build found no working C compiler); "
                "install gcc or clang, then reinstall inertia (`pip install --force-reinstall --no-deps --no-cache-dir --no-binary inertia inertia`, "
                "or `pip install -e .` in a checkout)") from None
        raise _Unavailable(f"the compiled kernel does not load ({error}); reinstall inertia") from None
    built_from = getattr(module, "source_digest", "")
    try:
        installed = kernel_build.source_digest("_kernels.c")
    except OSError:  # the sources are not installed beside it: nothing to compare
        installed = built_from
    if built_from != installed:
        raise _Unavailable(f"the compiled kernel {module.__file__} was built from other sources than the installed ones; "
                           "rebuild it (`pip install -e .`, or `python setup.py build_ext --inplace` in a checkout)")
    return module


def known_missing() -> bool:
    """Whether the extension is known to be unavailable (turned off, or tried and missing),
    without trying it: a step checks this before it plans for the kernel."""
    return _disabled() or (_tried and _loaded is None)


def _extension_module() -> ModuleType:
    return importlib.import_module("inertia._kernels")


def _extension_files() -> list[Path]:
    here = Path(__file__).parent
    return sorted(here.glob("_kernels.*.so")) + sorted(here.glob("_kernels.*.pyd"))


# ---- the XLA handler, built at run time into a private cache ----------------------------------
def load_xla() -> Optional[Any]:
    """The XLA FFI handler library (``_xla_kernels.c``, a ``ctypes.CDLL``), built on first use
    against jaxlib's FFI headers into the private cache; None where that is impossible (then
    one :class:`PerformanceWarning` says why, unless ``INERTIA_KERNELS=0``). Only the JAX
    backend calls this."""
    global _xla_loaded, _xla_reason, _xla_tried
    if _xla_tried:
        return _xla_loaded
    with _lock:
        if not _xla_tried:
            try:
                _xla_loaded = _build_xla()
            except _Unavailable as error:
                _xla_reason = str(error)
            except Exception as error:  # a bad setting ($CC, $INERTIA_KERNEL_CFLAGS): never a failed step
                _xla_reason = f"building the XLA handler failed: {type(error).__name__}: {error}"
            _xla_tried = True
            if _xla_reason is not None and _xla_reason != _DISABLED:
                _warn_slow("JAX's fused CPU kernel (the XLA handler)", _xla_reason)
    return _xla_loaded


def _build_xla() -> Any:
    import ctypes

    if _disabled():
        raise _Unavailable(_DISABLED)
    if os.name != "posix":  # a private cache needs POSIX owners and modes; the build, .so and pthreads
        raise _Unavailable(f"the XLA handler is built on POSIX systems only (this is {os.name!r})")
    try:
        import jax.ffi
        import jaxlib

        include = jax.ffi.include_dir()
    except (ImportError, AttributeError) as error:
        raise _Unavailable(f"jax.ffi unavailable: {error}") from None
    if not (Path(include) / "xla" / "ffi" / "api" / "c_api.h").exists():
        raise _Unavailable(f"XLA FFI headers not found in {include!r}")
    target = _cached_build("_xla_kernels.c", [include], [jaxlib.__version__.encode()])
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise _Unavailable(f"cannot load {target}: {error}") from None


def private_cache_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` may not hold code this process loads (None when it may): it must be a
    folder owned by this user that no other user can write to."""
    try:
        info = folder.stat()
    except OSError as error:
        return f"cannot read it ({error.strerror or error})"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and info.st_uid != geteuid():
        return f"it belongs to user id {info.st_uid}, not to this user ({geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"other users can write to it (mode {stat.S_IMODE(info.st_mode):o}; `chmod 700 {folder}` fixes that)"
    if not os.access(folder, os.R_OK | os.W_OK | os.X_OK):
        return "this process cannot read and write it"
    return None


def _private_folder(folder: Path) -> Path:
    """``folder``, made 0700 if it is missing, when it is private (else ``_Unavailable``)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        problem = f"cannot create it ({error.strerror or error})"
    else:
        problem = private_cache_problem(folder)
    if problem is not None:
        raise _Unavailable(f"the kernel cache {folder} is refused: {problem}; "
                           "point INERTIA_CACHE_DIR at a folder of your own")
    return folder


def _close_default_cache(root: Path) -> None:
    """Make the default cache private where an older inertia left it open (created with the
    umask, 0775 under Debian's `umask 002`): when it is this user's own folder, close it to
    0700 and delete every build in it, which another user may have written meanwhile. A
    folder named by INERTIA_CACHE_DIR is the user's choice and is only checked."""
    geteuid = getattr(os, "geteuid", None)
    try:
        info = root.stat()
    except OSError:
        return
    if geteuid is None or not stat.S_ISDIR(info.st_mode) or info.st_uid != geteuid():
        return
    if not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return
    try:
        os.chmod(root, 0o700)
        for build in root.glob("*/*"):
            if build.is_dir() and not build.is_symlink():
                continue
            build.unlink()
    except OSError:
        pass  # the check that follows refuses it, with the reason


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cached_build(source_name: str, includes: list[str], key_parts: list[bytes]) -> Path:
    """A verified build of ``source_name`` in the private cache, compiled when none is there."""
    here = Path(__file__).parent
    try:
        digest = kernel_build.source_digest(source_name)
    except OSError as error:
        raise _Unavailable(f"kernel source missing: {error}") from None
    compiler = kernel_build.compiler_command()
    try:
        version = subprocess.run(compiler + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"no C compiler ({compiler[0]}: {error.strerror if isinstance(error, OSError) else error}); "
                           "install gcc or clang, or set CC") from None
    # The key holds every flag that may be used; only a build probes which the compiler takes.
    candidates = kernel_build.REQUIRED_FLAGS + kernel_build.OPTIONAL_FLAGS + kernel_build.user_flags()
    key = hashlib.sha256(b"\0".join(
        [digest.encode(), version.encode(), " ".join(candidates).encode(), platform.machine().encode(),
         _cpu_fingerprint().encode()] + key_parts
    )).hexdigest()[:20]
    root = cache_dir()
    if not os.environ.get("INERTIA_CACHE_DIR"):
        _close_default_cache(root)
    folder = _private_folder(root)
    folder = _private_folder(folder / key)
    stem = Path(source_name).stem
    found = _verified(folder, stem)
    if found is not None:
        return found
    _remove_stale_temporaries(folder)
    flags = kernel_build.compile_flags(kernel_build.subprocess_compiles(compiler)) + ["-fPIC", "-shared"]
    return _compile(compiler, flags, here / source_name, includes, folder, stem)


def _verified(folder: Path, stem: str) -> Optional[Path]:
    """A build in ``folder`` whose bytes hash to the digest its name records; any other
    build file there is deleted (truncated, emptied or replaced: loading it could crash)."""
    pattern = re.compile(re.escape(stem) + r"\.([0-9a-f]{64})\.so")
    for path in sorted(folder.glob(f"{stem}.*.so")):
        match = pattern.fullmatch(path.name)
        try:
            info = path.lstat()
            owned = stat.S_ISREG(info.st_mode) and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if match and owned and hashlib.sha256(path.read_bytes()).hexdigest() == match.group(1):
                return path
            path.unlink()
        except OSError:
            continue
    return None


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary files of builds whose process is gone (or that are over an hour old)."""
    for path in folder.glob(".*.tmp"):
        parts = path.name.split(".")
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        try:
            alive = pid is not None and process_exists(pid)
            if not alive or time.time() - path.stat().st_mtime > _STALE_TEMPORARY_S:
                path.unlink()
        except OSError:
            continue




def _compile(compiler: list[str], flags: list[str], source: Path, includes: list[str], folder: Path, stem: str) -> Path:
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{stem}.{os.getpid()}.", suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise _Unavailable(f"the kernel cache {folder} is not writable: {error}") from None
    command = compiler + flags + [f"-I{path}" for path in includes] + [str(source), "-o", temporary]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise _Unavailable(f"compiling the kernel failed: {' '.join(command)}\n{done.stderr[-2000:]}")
        with open(temporary, "rb") as built:
            digest = hashlib.sha256(built.read()).hexdigest()
        target = folder / f"{stem}.{digest}.so"
        os.replace(temporary, target)
        return target
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"compiling the kernel failed: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
