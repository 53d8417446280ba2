"""Build, cache and load inertia's fused CPU kernels.

Two front ends share one pipeline (``_sgd_core.h``): ``_kernels.c``, a Python extension for
NumPy arrays and CPU torch tensors (:func:`load`, driven by :mod:`inertia.engine.host` for
every face), and ``_xla_kernels.c``, an XLA FFI handler
that JAX's jitted step calls on the CPU (:func:`load_xla`, built against jaxlib's headers).
They are compiled on first use with the machine's C compiler (``$CC``, else ``cc``) for this
CPU, and cached on disk, so a second process loads them in milliseconds. The cache lives in
``$INERTIA_CACHE_DIR``, else ``$XDG_CACHE_HOME/inertia``, else ``~/.cache/inertia``; its key
covers the sources, the compiler and its flags, the CPU, and what the build reads besides (the
Python ABI and NumPy's version for the extension, which reads arrays through NumPy's C API;
jaxlib's version for the handler), so a changed source or a different machine never loads a
stale build. A build is written to a temporary file and renamed into place, so concurrent
processes never load half a file.

Without a compiler (or with ``INERTIA_KERNELS=0``), :func:`load` returns None and every
optimizer keeps the reference path; :func:`unavailable_reason` says why.

Example:
    >>> from inertia import kernels
    >>> module = kernels.load()
    >>> module is None or hasattr(module, "step")
    True
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

__all__ = ["load", "load_xla", "unavailable_reason", "xla_unavailable_reason", "cache_dir", "thread_count"]

_MODULE_NAME = "_inertia_kernels"
_CORE_HEADER = "_sgd_core.h"
_FLAGS = ["-O2", "-fvect-cost-model=dynamic", "-march=native", "-ffp-contract=off", "-fno-math-errno",
          "-fPIC", "-shared", "-pthread"]

_lock = threading.Lock()
_loaded: Optional[ModuleType] = None
_reason: Optional[str] = None
_tried = False
_xla_loaded: Optional[Any] = None
_xla_reason: Optional[str] = None
_xla_tried = False


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
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
    """None when the kernels load; otherwise why they do not (after a :func:`load` attempt)."""
    load()
    return _reason


def load() -> Optional[ModuleType]:
    """The compiled kernel module, building it on first use; None where that is impossible."""
    global _loaded, _reason, _tried
    if _tried:
        return _loaded
    with _lock:
        if not _tried:
            try:
                _loaded = _build_and_import()
            except _Unavailable as error:
                _reason = str(error)
            _tried = True
    return _loaded


class _Unavailable(Exception):
    pass


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")[:1]


def _flags() -> list[str]:
    """The build flags: inertia's own, then ``$INERTIA_KERNEL_CFLAGS`` (a sanitizer build,
    say: ``-fsanitize=address,undefined``); both are part of the cache key."""
    return _FLAGS + shlex.split(os.environ.get("INERTIA_KERNEL_CFLAGS", ""))


def _build(source_name: str, includes: list[str], key_parts: list[bytes], suffix: str) -> Path:
    """Compile ``source_name`` (with the shared core header) into the cache, unless there."""
    if os.environ.get("INERTIA_KERNELS", "1") in ("0", "false", "off", "no"):
        raise _Unavailable("disabled by INERTIA_KERNELS")
    here = Path(__file__).parent
    try:
        texts = [(here / name).read_bytes() for name in (source_name, _CORE_HEADER)]
    except OSError as error:
        raise _Unavailable(f"kernel source missing: {error}") from None
    compiler = _compiler()
    try:
        version = subprocess.run(compiler + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"no C compiler ({compiler[0]}): {error}") from None
    key = hashlib.sha256(
        b"\0".join(
            texts + key_parts + [version.encode(), " ".join(_flags()).encode(), platform.machine().encode(),
                                 _cpu_fingerprint().encode()]
        )
    ).hexdigest()[:20]
    target = cache_dir() / key / (Path(source_name).stem + suffix)
    if not target.exists():
        _compile(compiler, here / source_name, includes, target)
    return target


def _build_and_import() -> ModuleType:
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").exists():
        raise _Unavailable(f"Python headers not found in {include!r}")
    import numpy

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    # The kernels read arrays through NumPy's C API: its version is part of the key.
    key_parts = [sys.version.encode(), suffix.encode(), numpy.__version__.encode()]
    target = _build("_kernels.c", [include, numpy.get_include()], key_parts, suffix)
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, target)
    if spec is None or spec.loader is None:
        raise _Unavailable(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise _Unavailable(f"cannot load {target}: {error}") from None
    return module


def load_xla() -> Optional[Any]:
    """The XLA FFI handler library (``_xla_kernels.c``, a ``ctypes.CDLL``), building it on
    first use against jaxlib's FFI headers; None where that is impossible (no compiler, no
    headers, ``INERTIA_KERNELS=0``). Only the JAX backend calls this."""
    global _xla_loaded, _xla_reason, _xla_tried
    if _xla_tried:
        return _xla_loaded
    with _lock:
        if not _xla_tried:
            try:
                _xla_loaded = _build_xla()
            except _Unavailable as error:
                _xla_reason = str(error)
            _xla_tried = True
    return _xla_loaded


def xla_unavailable_reason() -> Optional[str]:
    """None when the XLA handler loads; otherwise why it does not (after a :func:`load_xla` attempt)."""
    load_xla()
    return _xla_reason


def _build_xla() -> Any:
    import ctypes

    try:
        import jax.ffi
        import jaxlib

        include = jax.ffi.include_dir()
    except (ImportError, AttributeError) as error:
        raise _Unavailable(f"jax.ffi unavailable: {error}") from None
    if not (Path(include) / "xla" / "ffi" / "api" / "c_api.h").exists():
        raise _Unavailable(f"XLA FFI headers not found in {include!r}")
    # The handler is built against the headers of this jaxlib: its version is part of the key.
    target = _build("_xla_kernels.c", [include], [jaxlib.__version__.encode()], ".so")
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise _Unavailable(f"cannot load {target}: {error}") from None


def _compile(compiler: list[str], source: Path, includes: list[str], target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        os.close(handle)
    except OSError as error:
        raise _Unavailable(f"cache directory {target.parent} is not writable: {error}") from None
    command = compiler + _flags() + [f"-I{path}" for path in includes] + [str(source), "-o", temporary]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise _Unavailable(f"compiling the kernels failed: {' '.join(command)}\n{done.stderr[-2000:]}")
        os.replace(temporary, target)
    except (OSError, subprocess.SubprocessError) as error:
        raise _Unavailable(f"compiling the kernels failed: {error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
