"""``inertia doctor``: what inertia found on this machine, and why a step is slower than it could be.

It reports the compiled kernel (built with the package) and JAX's XLA handler (built at run
time into a private cache), each loaded or with the reason it is not and the fix; the C
compiler; the kernel cache and whether it is private; the environment variables inertia
reads; and the version of every optional library (or the extra that installs it). Versions
come from the installed distributions' metadata: nothing heavy is imported except jax, to
try its handler, when it is installed.

Example:
    >>> from inertia import doctor
    >>> rows = dict(doctor.report(try_jax=False))
    >>> rows["numpy"].split()[0].count(".") >= 1
    True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import warnings
from typing import Optional

from inertia import __version__, kernel_build, kernels

__all__ = ["report", "format_report", "problems"]

# Libraries inertia can use, with the extra that installs each.
_OPTIONAL = (
    ("torch", "inertia[torch]"), ("jax", "inertia[jax]"), ("jaxlib", "inertia[jax]"), ("mlx", "inertia[mlx]"),
    ("keras", "inertia[test]"), ("tensorflow", "inertia[test]"), ("tf-keras", "inertia[test]"),
    ("optax", "inertia[test]"), ("scikit-learn", "inertia[demo]"), ("rich", "inertia[demo]"),
    ("matplotlib", "inertia[plot]"),
)
_SETTINGS = ("INERTIA_KERNELS", "INERTIA_CACHE_DIR", "INERTIA_NUM_THREADS", "INERTIA_KERNEL_CFLAGS", "INERTIA_BACKEND", "CC")


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _compiler() -> str:
    try:
        command = kernel_build.compiler_command()
    except ValueError as error:
        return f"unusable: {error}"
    try:
        done = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"not found ({command[0]}: {getattr(error, 'strerror', None) or error}); only JAX's handler needs one"
    first = (done.stdout.splitlines() or ["?"])[0]
    return f"{command[0]}: {first}"


def report(try_jax: bool = True) -> list[tuple[str, str]]:
    """(name, finding) rows; ``try_jax=False`` skips importing jax to try its handler."""
    with warnings.catch_warnings():  # the report says it all; no PerformanceWarning on top
        warnings.simplefilter("ignore", kernels.PerformanceWarning)
        module = kernels.load()
        rows = [
            ("inertia", f"{__version__} ({os.path.dirname(os.path.abspath(__file__))})"),
            ("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}"),
            ("threads", f"{kernels.thread_count()} per kernel call"),
            ("kernel (NumPy, CPU torch)",
             f"compiled: {module.__file__}" if module is not None else f"unavailable: {kernels.unavailable_reason()}"),
        ]
        if _version("jax") is None:
            rows.append(("kernel (JAX on the CPU)", "not needed: jax is not installed"))
        elif not try_jax:
            rows.append(("kernel (JAX on the CPU)", "not tried"))
        else:
            library = kernels.load_xla()
            rows.append(("kernel (JAX on the CPU)", f"compiled: {library._name}" if library is not None
                         else f"unavailable: {kernels.xla_unavailable_reason()}"))
    cache = kernels.cache_dir()
    problem = kernels.private_cache_problem(cache) if cache.exists() else None
    rows.append(("kernel cache", f"{cache} ({'not created yet' if not cache.exists() else problem or 'private'})"))
    rows.append(("C compiler", _compiler()))
    rows += [(name, f"{os.environ[name]!r}") for name in _SETTINGS if name in os.environ]
    rows.append(("numpy", _version("numpy") or "not installed"))
    for distribution, extra in _OPTIONAL:
        version = _version(distribution)
        rows.append((distribution, version or f"not installed (pip install '{extra}')"))
    return rows


def problems(rows: list[tuple[str, str]]) -> list[str]:
    """The rows that say a kernel is unavailable (``INERTIA_KERNELS=0`` aside)."""
    return [f"{name}: {finding}" for name, finding in rows
            if name.startswith("kernel (") and finding.startswith("unavailable") and "disabled by INERTIA_KERNELS" not in finding]


def format_report(rows: list[tuple[str, str]]) -> str:
    """The rows as aligned plain text."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {finding}" for name, finding in rows)


def main(strict: bool = False) -> int:
    """Print the report; with ``strict``, exit 1 when a kernel is unavailable."""
    rows = report()
    print(format_report(rows))
    found = problems(rows)
    for line in found:
        print(f"\nslower than it could be: {line}", file=sys.stderr)
    return 1 if strict and found else 0
