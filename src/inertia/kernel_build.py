"""How inertia's C kernels are compiled: one place for the flags and the source digest.

Two builds read this module. ``setup.py`` compiles ``_kernels.c`` into the extension
``inertia._kernels`` when the package is built (a wheel, ``pip install .``, ``pip install -e .``);
:mod:`inertia.kernels` compiles the XLA FFI handler ``_xla_kernels.c`` at run time, because it
needs the headers of the jaxlib the user has installed. ``setup.py`` loads this file by its
path, before inertia (or NumPy) can be imported: it uses the standard library only.

The flags are portable: no ``-march=native``, so a wheel runs on any CPU of its architecture.
The update is memory-bound, and a native build measured no faster (2026-12-04, 2 cores:
32M float32, momentum: 10.5 ms native against 10.8-11.6 generic; 2000 x 4096: 2.9-3.0 against
2.8-3.1). The one thing the baseline lacks that the step needs is the FMA unit (the heavy-ball
form's ``fma()`` becomes a libm call per element: 57 ms instead of 10.5 on 32M float32), so
``_sgd_core.h`` carries a second copy of the pipeline compiled for AVX2 and FMA, chosen at run
time on CPUs that have them (x86-64, GCC or clang). ``-ffp-contract=off`` keeps the reference path's roundings (no fused multiply-adds
the reference does not make). Flags one compiler lacks (GCC's ``-fvect-cost-model``; clang has
no such flag) are probed and left out. ``$INERTIA_KERNEL_CFLAGS`` adds flags of the user's own
(a sanitizer build, say), to both builds.

Example:
    >>> from inertia import kernel_build
    >>> "-ffp-contract=off" in kernel_build.REQUIRED_FLAGS
    True
    >>> len(kernel_build.source_digest("_kernels.c"))
    64
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

__all__ = [
    "REQUIRED_FLAGS", "OPTIONAL_FLAGS", "CORE_HEADER", "user_flags", "source_digest", "compiler_command", "accepted",
    "subprocess_compiles", "compile_flags",
]

HERE = Path(__file__).resolve().parent
CORE_HEADER = "_sgd_core.h"
# Every build needs these: the numbers depend on -ffp-contract=off.
REQUIRED_FLAGS = ["-O2", "-ffp-contract=off", "-fno-math-errno", "-pthread"]
# Kept where the compiler accepts them (probed with -Werror).
OPTIONAL_FLAGS = ["-fvect-cost-model=dynamic"]


def user_flags() -> list[str]:
    """``$INERTIA_KERNEL_CFLAGS``, split as a shell would."""
    text = os.environ.get("INERTIA_KERNEL_CFLAGS", "")
    try:
        return shlex.split(text)
    except ValueError as error:
        raise ValueError(f"INERTIA_KERNEL_CFLAGS cannot be split as a shell would ({error}). Received: {text!r}") from None


def source_digest(source_name: str, folder: Path = HERE) -> str:
    """SHA-256 over a front end's source and the shared core header: a built kernel records it,
    and the loader compares, so a kernel built from other sources is never run."""
    digest = hashlib.sha256()
    for name in (source_name, CORE_HEADER):
        digest.update((Path(folder) / name).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def compiler_command() -> list[str]:
    """The C compiler a run-time build calls: ``$CC``, else Python's own, else ``cc``."""
    import sysconfig

    text = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    try:
        return shlex.split(text) or ["cc"]
    except ValueError as error:
        raise ValueError(f"CC cannot be split as a shell would ({error}). Received: {text!r}") from None


def accepted(flags: list[str], compiles: Callable[[Path, list[str]], bool]) -> list[str]:
    """The ``flags`` a compiler takes: ``compiles(source, [flag, "-Werror"])`` says whether
    a one-line C file builds with a flag (clang only warns about unknown flags without
    ``-Werror``)."""
    with tempfile.TemporaryDirectory(prefix="inertia-flags-") as folder:
        source = Path(folder) / "probe.c"
        source.write_text("int inertia_probe(void) { return 0; }\n")
        return [flag for flag in flags if compiles(source, [flag, "-Werror"])]


def subprocess_compiles(compiler: list[str]) -> Callable[[Path, list[str]], bool]:
    """A ``compiles`` for :func:`accepted` that runs ``compiler`` directly."""

    def compiles(source: Path, flags: list[str]) -> bool:
        try:
            done = subprocess.run(compiler + flags + ["-c", str(source), "-o", str(source.with_suffix(".o"))],
                                  capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0

    return compiles


def compile_flags(compiles: Optional[Callable[[Path, list[str]], bool]]) -> list[str]:
    """The flags of a build: the required ones, the optional ones the compiler takes, the user's."""
    optional = accepted(OPTIONAL_FLAGS, compiles) if compiles is not None else []
    return REQUIRED_FLAGS + optional + user_flags()
