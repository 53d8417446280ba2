"""How inertia's kernels are built and loaded, and how it fares when they cannot be.

The extension ``inertia._kernels`` is compiled with the package (``setup.py``); the XLA handler
at run time into a private cache (``inertia.kernels``). Every fault here must leave steps
running, on the reference path with the reference numbers, with one PerformanceWarning that
says why: a corrupt, unreadable or foreign-owned cache, no compiler, a stale or missing
extension, many processes building at once. Faults that could crash a process (loading a
truncated library) run in subprocesses.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import requires
from inertia import kernel_build, kernels

ROOT = Path(__file__).resolve().parents[1]

# One JAX step that takes the XLA handler where it loads (float32, 64 KiB and up: the custom
# call), printed with the handler's state and every PerformanceWarning raised.
JAX_STEP = """
import warnings
warnings.simplefilter("always")
import numpy as np, jax.numpy as jnp, inertia
from inertia import kernels
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    w = inertia.Variable(jnp.ones(65536, jnp.float32))
    opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
    for _ in range(3):
        opt.apply([jnp.full(65536, 0.25, jnp.float32)], [w])
    again = inertia.SGD(learning_rate=0.5)
    again.apply([jnp.ones(65536, jnp.float32)], [inertia.Variable(jnp.ones(65536, jnp.float32))])
slow = [str(c.message) for c in caught if issubclass(c.category, kernels.PerformanceWarning)]
print(repr((kernels.load_xla() is not None, kernels.xla_unavailable_reason(), slow, np.asarray(w.value)[:2].tolist())))
"""
# The weights after JAX_STEP's three steps, with or without the handler (hand-computed:
# v = -0.125, -0.2375, -0.33875; w = 1 + the running sum of v).
JAX_STEP_WEIGHTS = [0.29875, 0.29875]


def _python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key not in ("INERTIA_KERNELS",)}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout.strip()


def _jax_step(cache: Path, **env: str) -> tuple:
    requires("jax")
    return eval(_python(JAX_STEP, INERTIA_CACHE_DIR=str(cache), **env).splitlines()[-1])


def _built(cache: Path) -> list[Path]:
    return sorted(cache.rglob("_xla_kernels.*.so"))


# ---- the XLA handler's private cache ------------------------------------------------------------
@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache holding one fresh build of the handler, made by a process of its own (copied by
    the tests that need a built cache, so that only a few of them compile)."""
    cache = tmp_path_factory.mktemp("template") / "cache"
    loaded, reason, slow, weights = _jax_step(cache)
    assert (loaded, reason, slow) == (True, None, [])
    assert weights == pytest.approx(JAX_STEP_WEIGHTS, rel=1e-6)
    return cache


def _copy(cache: Path, destination: Path) -> Path:
    shutil.copytree(cache, destination)
    return destination


def _load_xla_here(monkeypatch, cache: Path, **env: str) -> tuple:
    """``load_xla`` in this process as on a first use: (library or None, reason, warnings)."""
    requires("jax")
    monkeypatch.setenv("INERTIA_CACHE_DIR", str(cache))
    monkeypatch.delenv("INERTIA_KERNELS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name, value in (("_xla_tried", False), ("_xla_loaded", None), ("_xla_reason", None)):
        monkeypatch.setattr(kernels, name, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        library = kernels.load_xla()
        assert kernels.load_xla() is library  # tried once
    slow = [str(c.message) for c in caught if issubclass(c.category, kernels.PerformanceWarning)]
    return library, kernels._xla_reason, slow


def test_a_fresh_cache_is_private_and_holds_one_verified_build(built_cache):
    (built,) = _built(built_cache)
    assert built.name == f"_xla_kernels.{hashlib.sha256(built.read_bytes()).hexdigest()}.so"
    assert stat.S_IMODE(built_cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(built.parent.stat().st_mode) == 0o700
    assert not any(p.name.endswith(".tmp") for p in built_cache.rglob("*"))


def test_a_built_cache_is_loaded_without_compiling(built_cache, tmp_path, monkeypatch):
    cache = _copy(built_cache, tmp_path / "cache")
    (built,) = _built(cache)
    monkeypatch.setattr(kernels, "_compile", lambda *args: pytest.fail("compiled although a verified build is cached"))
    library, reason, slow = _load_xla_here(monkeypatch, cache)
    assert (library._name, reason, slow) == (str(built), None, [])


DAMAGES = {
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x7fELF not really" * 100,
    "truncated": lambda data: data[: len(data) // 2],
    "one byte changed": lambda data: data[:4000] + bytes([data[4000] ^ 1]) + data[4001:],
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_build_is_deleted_unloaded(built_cache, tmp_path, damage):
    cache = _copy(built_cache, tmp_path / "cache")
    (built,) = _built(cache)
    built.write_bytes(DAMAGES[damage](built.read_bytes()))
    assert kernels._verified(built.parent, "_xla_kernels") is None
    assert not built.exists()


def test_a_truncated_build_is_rebuilt_and_the_step_runs(built_cache, tmp_path):
    cache = _copy(built_cache, tmp_path / "cache")
    (built,) = _built(cache)
    data = built.read_bytes()
    built.write_bytes(data[: len(data) // 2])
    # Loading a truncated library can kill the process (SIGBUS): a process of its own.
    loaded, reason, slow, weights = _jax_step(cache)
    assert (loaded, reason, slow) == (True, None, [])
    assert weights == pytest.approx(JAX_STEP_WEIGHTS, rel=1e-6)
    assert _built(cache) == [built] and built.read_bytes() == data  # rebuilt, byte for byte


def test_a_cache_that_cannot_be_created_is_refused_with_one_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    library, reason, slow = _load_xla_here(monkeypatch, blocker / "cache")
    assert library is None
    assert reason.startswith(f"the kernel cache {blocker / 'cache'} is refused: cannot create it")
    assert len(slow) == 1 and reason in slow[0] and "INERTIA_CACHE_DIR" in slow[0] and "inertia doctor" in slow[0]


def test_a_cache_other_users_can_write_is_refused(built_cache, tmp_path, monkeypatch):
    cache = _copy(built_cache, tmp_path / "cache")
    cache.chmod(0o777)
    library, reason, slow = _load_xla_here(monkeypatch, cache)
    assert library is None
    assert "other users can write to it (mode 777; `chmod 700" in reason
    assert len(slow) == 1


def test_a_cache_owned_by_another_user_is_refused_and_nothing_in_it_runs(built_cache, tmp_path, monkeypatch):
    cache = _copy(built_cache, tmp_path / "cache")
    owner = cache.stat().st_uid
    # This process runs as a user id that does not own the folder: the genuine build planted
    # there must not be loaded.
    monkeypatch.setattr(kernels.os, "geteuid", lambda: owner + 1)
    library, reason, slow = _load_xla_here(monkeypatch, cache)
    assert library is None
    assert f"belongs to user id {owner}, not to this user ({owner + 1})" in reason
    assert len(slow) == 1


def test_private_cache_problem_names_each_problem(tmp_path, monkeypatch):
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    assert kernels.private_cache_problem(folder) is None
    assert kernels.private_cache_problem(tmp_path / "missing").startswith("cannot read it")
    (tmp_path / "file").write_text("")
    assert kernels.private_cache_problem(tmp_path / "file") == "it is not a folder"
    folder.chmod(0o720)
    assert kernels.private_cache_problem(folder).startswith("other users can write to it (mode 720")
    folder.chmod(0o700)
    monkeypatch.setattr(kernels.os, "geteuid", lambda: 4242)
    assert kernels.private_cache_problem(folder) == f"it belongs to user id {folder.stat().st_uid}, not to this user (4242)"


def test_no_compiler_warns_once_and_steps_on_the_reference_path(tmp_path):
    loaded, reason, slow, weights = _jax_step(tmp_path / "cache", CC="/nonexistent/cc")
    assert not loaded
    assert reason.startswith("no C compiler (/nonexistent/cc") and "install gcc or clang" in reason
    assert len(slow) == 1 and reason in slow[0]
    assert weights == pytest.approx(JAX_STEP_WEIGHTS, rel=1e-6)
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_inertia_kernels_0_is_silent(tmp_path, monkeypatch):
    library, reason, slow = _load_xla_here(monkeypatch, tmp_path / "cache", INERTIA_KERNELS="0")
    assert (library, reason, slow) == (None, "disabled by INERTIA_KERNELS", [])
    assert not (tmp_path / "cache").exists()


def test_concurrent_first_uses_all_load_a_verified_build(tmp_path):
    requires("jax")
    cache = tmp_path / "cache"
    code = "from inertia import kernels\nlibrary = kernels.load_xla()\nprint(library._name if library else kernels.xla_unavailable_reason())"
    environment = {**os.environ, "INERTIA_CACHE_DIR": str(cache)}
    environment.pop("INERTIA_KERNELS", None)
    processes = [subprocess.Popen([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0] * 3, outputs
    loaded = {Path(out.strip()) for out, _ in outputs}
    built = _built(cache)
    assert built and loaded <= set(built), (loaded, built)
    for path in built:
        assert path.name == f"_xla_kernels.{hashlib.sha256(path.read_bytes()).hexdigest()}.so"
    assert not any(p.name.endswith(".tmp") for p in cache.rglob("*"))


def test_temporary_files_of_dead_builds_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"._xla_kernels.{dead}.abc123.tmp"
    live = tmp_path / f"._xla_kernels.{os.getpid()}.def456.tmp"
    old = tmp_path / f"._xla_kernels.{os.getpid()}.ghi789.tmp"
    for path in (stale, live, old):
        path.write_bytes(b"part of a build")
    os.utime(old, (1e9, 1e9))  # a live process id, but hours old: the id was reused
    kernels._remove_stale_temporaries(tmp_path)
    assert (stale.exists(), live.exists(), old.exists()) == (False, True, False)


# ---- the extension, built with the package ------------------------------------------------------
MISSING_EXTENSION = """
import warnings, numpy as np
import inertia
from inertia import kernels
{patch}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    w = inertia.Variable(np.ones(3, np.float32))
    opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
    for _ in range(3):
        opt.apply([np.full(3, 0.25, np.float32)], [w])
    inertia.SGD(learning_rate=0.5).apply([np.ones(3, np.float32)], [inertia.Variable(np.ones(3, np.float32))])
slow = [str(c.message) for c in caught if issubclass(c.category, kernels.PerformanceWarning)]
where = sorted({{c.filename for c in caught if issubclass(c.category, kernels.PerformanceWarning)}})
print(repr((kernels.load() is not None, kernels.unavailable_reason(), slow, opt._fused_plan is None, w.numpy().tolist(), where)))
"""
EXTENSION_PATCHES = {
    "not built": (
        "def refuse():\n"
        "    raise ImportError('No module named inertia._kernels')\n"
        "kernels._extension_module = refuse\n"
        "kernels._extension_files = lambda: []",
        "inertia was installed without its compiled kernel (the build found no working C compiler)",
    ),
    "does not load": (
        "def refuse():\n"
        "    raise ImportError('undefined symbol: PyFoo')\n"
        "kernels._extension_module = refuse",
        "the compiled kernel does not load (undefined symbol: PyFoo); reinstall inertia",
    ),
    "stale": (
        "from inertia import kernel_build\nkernel_build.source_digest = lambda name, *a: 'other'",
        "was built from other sources than the installed ones; rebuild it",
    ),
}


@pytest.mark.parametrize("case", list(EXTENSION_PATCHES))
def test_a_missing_or_stale_extension_warns_once_and_steps_on_the_reference_path(case):
    patch, expected = EXTENSION_PATCHES[case]
    loaded, reason, slow, no_plan, weights, where = eval(_python(MISSING_EXTENSION.format(patch=patch)).splitlines()[-1])
    assert where == ["<string>"]  # the warning points at the user's line that stepped, not into inertia
    assert not loaded
    assert expected in reason
    assert len(slow) == 1 and reason in slow[0] and "inertia doctor" in slow[0]
    assert weights == [_keras_momentum_in_float32()] * 3  # the reference path's numbers, to the bit


def _keras_momentum_in_float32(steps: int = 3) -> float:
    """Keras' rule by hand in float32 (lr 0.5, momentum 0.9, g 0.25, w = 1): v = v*m - g*lr; w += v."""
    f = np.float32
    w, v = f(1), f(0)
    for _ in range(steps):
        v = v * f(0.9) - f(0.25) * f(0.5)
        w = w + v
    return float(w)


# ---- flags and wheels ---------------------------------------------------------------------------
def test_flags_a_compiler_rejects_are_left_out():
    compiler = kernel_build.compiler_command()
    if shutil.which(compiler[0]) is None:
        pytest.fail(f"no C compiler {compiler[0]!r}: CI installs one")
    compiles = kernel_build.subprocess_compiles(compiler)
    assert kernel_build.accepted(["-O2", "-fno-such-flag-anywhere"], compiles) == ["-O2"]
    flags = kernel_build.compile_flags(compiles)
    assert flags[: len(kernel_build.REQUIRED_FLAGS)] == kernel_build.REQUIRED_FLAGS
    assert "-march=native" not in flags  # a wheel must run on any CPU of its architecture
    # a compiler that rejects everything optional (clang and GCC's -fvect-cost-model) still builds
    assert kernel_build.compile_flags(lambda source, flags: False) == kernel_build.REQUIRED_FLAGS + kernel_build.user_flags()


def _source_copy(destination: Path) -> Path:
    """What a source distribution holds, without anything built in place."""
    destination.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, destination / name)
    shutil.copytree(ROOT / "src", destination / "src", ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info"))
    return destination


@pytest.mark.parametrize("compiler", ["default", "none"])
def test_a_wheel_carries_the_compiled_kernel_or_installs_without_one(tmp_path, compiler):
    source = _source_copy(tmp_path / "source")
    environment = {**os.environ}
    if compiler == "none":
        environment["CC"] = "/nonexistent/cc"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path / "wheels"), str(source)], env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("inertia-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    extensions = [name for name in names if name.startswith("inertia/_kernels.") and name.endswith(".so")]
    assert len(extensions) == (1 if compiler == "default" else 0), names
    assert {"inertia/_xla_kernels.c", "inertia/_sgd_core.h", "inertia/_kernels.c", "inertia/py.typed"} <= set(names)


# The same steps, printed by a process that imports inertia from the folder PYTHONPATH names:
# every face's fast path with norms clipped, EMA, weight decay and Nesterov, on float32 and float64.
KERNEL_NUMBERS = """
import numpy as np, inertia
from inertia import kernels
module = kernels.load()
assert module is not None, kernels.unavailable_reason()
rng = np.random.default_rng(3)
out = [module.__file__]
for dtype in ("float32", "float64"):
    ws = [inertia.Variable(rng.standard_normal(n).astype(dtype)) for n in (5, 70000)]
    opt = inertia.SGD(learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clipnorm=1.0, use_ema=True)
    for _ in range(4):
        opt.apply([rng.standard_normal(w.shape).astype(dtype) for w in ws], ws)
    assert opt._fused_plan is not None
    out += [w.numpy().tobytes().hex() for w in ws] + [v.numpy().tobytes().hex() for v in opt.variables]
print("\\n".join(out))
"""


def test_a_clang_build_gives_the_gcc_build_s_numbers_bit_for_bit(tmp_path):
    requires("ziglang")  # clang, as `python -m ziglang cc` (the test extra installs it)
    source = _source_copy(tmp_path / "source")
    clang = f"{sys.executable} -m ziglang cc"
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=source,
                          env={**os.environ, "CC": clang}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (source / "src" / "inertia").glob("_kernels.*.so")
    assert b"clang version" in built.read_bytes()
    clang_numbers = _python(KERNEL_NUMBERS, PYTHONPATH=str(source / "src")).splitlines()
    gcc_numbers = _python(KERNEL_NUMBERS, PYTHONPATH=str(ROOT / "src")).splitlines()
    assert clang_numbers[0] == str(built) and Path(gcc_numbers[0]).parent == ROOT / "src" / "inertia"
    assert clang_numbers[1:] == gcc_numbers[1:]


@pytest.mark.parametrize("setting", [{"INERTIA_KERNEL_CFLAGS": '-DTAG="a b'}, {"CC": '"unclosed'}, {"CC": " "}])
def test_a_setting_that_breaks_the_build_never_fails_a_step(tmp_path, setting):
    """A bad $CC or $INERTIA_KERNEL_CFLAGS (an unclosed quote, nothing at all) costs the XLA
    handler, with one warning; every step runs, and `inertia doctor` still reports."""
    loaded, reason, slow, weights = _jax_step(tmp_path / "cache", **setting)
    assert weights == pytest.approx(JAX_STEP_WEIGHTS, rel=1e-6)
    if setting.get("CC") == " ":  # empty: the default compiler serves
        assert (loaded, reason, slow) == (True, None, [])
        return
    assert not loaded and len(slow) == 1 and reason in slow[0]
    name = next(iter(setting))
    assert f"{name} cannot be split as a shell would" in reason
    done = subprocess.run([sys.executable, "-m", "inertia", "doctor"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "INERTIA_CACHE_DIR": str(tmp_path / "cache"), **setting})
    assert done.returncode == 0 and f"{name} cannot be split" in done.stdout, done.stderr[-2000:]


def test_steps_the_kernel_would_never_serve_do_not_warn_that_it_is_missing():
    """Without the extension, only a step it would have run warns: JAX arrays, float16 arrays
    and the Keras face on them never use it, so they say nothing."""
    requires("jax")
    code = MISSING_EXTENSION_SILENCE
    out = eval(_python(code).splitlines()[-1])
    assert out == {"jax float32": [], "numpy float16": [], "numpy float32": ["inertia._kernels"]}


MISSING_EXTENSION_SILENCE = """
import warnings, numpy as np, jax.numpy as jnp, inertia
from inertia import kernels
def refuse():
    raise ImportError('No module named inertia._kernels')
kernels._extension_module = refuse
kernels._extension_files = lambda: []
said = {}
for label, make in (("jax float32", lambda: jnp.ones(3, jnp.float32)), ("numpy float16", lambda: np.ones(3, np.float16)),
                    ("numpy float32", lambda: np.ones(3, np.float32))):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = inertia.Variable(make())
        opt = inertia.SGD(learning_rate=0.5, momentum=0.9)
        for _ in range(2):
            opt.apply([make()], [w])
    said[label] = ["inertia._kernels" for c in caught if issubclass(c.category, kernels.PerformanceWarning) and "inertia._kernels" in str(c.message)]
print(repr(said))
"""


def test_an_open_default_cache_from_an_older_version_is_closed_and_emptied(built_cache, tmp_path, monkeypatch):
    """An older inertia made ~/.cache/inertia with the umask (0775 under `umask 002`): the
    default cache is closed to 0700 and its builds deleted (another user may have written
    them), then built afresh. A folder named by INERTIA_CACHE_DIR is only refused (above)."""
    home_cache = _copy(built_cache, tmp_path / "xdg" / "inertia")
    home_cache.chmod(0o775)
    (planted,) = _built(home_cache)
    planted_bytes = planted.read_bytes()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("INERTIA_CACHE_DIR", raising=False)
    monkeypatch.delenv("INERTIA_KERNELS", raising=False)
    for name, value in (("_xla_tried", False), ("_xla_loaded", None), ("_xla_reason", None)):
        monkeypatch.setattr(kernels, name, value)
    compiled = []
    real_compile = kernels._compile
    monkeypatch.setattr(kernels, "_compile", lambda *args: compiled.append(1) or real_compile(*args))
    assert kernels.load_xla() is not None, kernels._xla_reason
    assert stat.S_IMODE(home_cache.stat().st_mode) == 0o700
    assert compiled == [1]  # the old build was deleted, not loaded
    assert [p.read_bytes() for p in _built(home_cache)] == [planted_bytes]
