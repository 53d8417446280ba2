"""Builds inertia's compiled kernel, ``inertia._kernels``, with the package.

Everything else about the package is in ``pyproject.toml``; this file only adds the C
extension, which ``pip install .``, ``pip install -e .`` and ``pip wheel .`` compile once.
The flags come from ``src/inertia/kernel_build.py`` (portable, GCC or clang). The extension is
optional: without a working C compiler the install still succeeds, as pure Python, and inertia
then runs every step on its reference path and says so once (``inertia doctor`` says why).
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("inertia_kernel_build", HERE / "src" / "inertia" / "kernel_build.py")
kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_build)


class BuildKernels(build_ext):
    """Adds NumPy's headers, the probed flags and the source digest to the kernel's build."""

    def build_extension(self, ext):
        import numpy  # a build requirement (pyproject.toml): the kernel reads arrays through NumPy's C API

        def compiles(source, flags):
            try:
                self.compiler.compile([str(source)], output_dir=str(source.parent), extra_postargs=flags)
            except Exception:  # CompileError, or no compiler at all
                return False
            return True

        ext.include_dirs.append(numpy.get_include())
        ext.extra_compile_args = kernel_build.compile_flags(compiles)
        ext.extra_link_args = ["-pthread"]
        ext.define_macros.append(("INERTIA_SOURCE_DIGEST", '"%s"' % kernel_build.source_digest("_kernels.c", HERE / "src" / "inertia")))
        super().build_extension(ext)


setup(
    ext_modules=[Extension("inertia._kernels", sources=["src/inertia/_kernels.c"], depends=["src/inertia/_sgd_core.h"], optional=True)],
    cmdclass={"build_ext": BuildKernels},
)
