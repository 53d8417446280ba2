"""The ``inertia`` command line, run as the user runs it: ``python -m inertia ...``."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_backend, requires

import inertia
from inertia import cli

# The child must import this very checkout, installed or not.
_SRC = str(Path(inertia.__file__).resolve().parents[1])

needs_sklearn = pytest.mark.usefixtures("sklearn")  # fails instead of skipping in CI


def _inertia(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "inertia", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_help() -> None:
    done = _inertia("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: inertia ")
    assert "demo" in done.stdout and "--version" in done.stdout


def test_demo_help() -> None:
    done = _inertia("demo", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: inertia demo ")
    for option in ("--backend {numpy,torch,jax,tensorflow}", "--face {keras,torch,legacy,tf_keras,mlx}", "--compare", "--epochs", "--seed",
                   "--ema-momentum", "--quiet", "inertia[demo]"):
        assert option in done.stdout


def test_version() -> None:
    done = _inertia("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"inertia {inertia.__version__}\n"


def test_unknown_command_is_a_usage_error() -> None:
    done = _inertia("train")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "invalid choice: 'train'" in done.stderr


@needs_sklearn
def test_demo_end_to_end() -> None:
    done = _inertia("demo", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\r" not in done.stdout  # a pipe is not a terminal: no redrawing
    lines = done.stdout.splitlines()
    assert len(lines) == 7, done.stdout
    assert lines[0].startswith(f"inertia {inertia.__version__} demo: MLP 64-64-10")
    assert lines[1] == "backend numpy (numpy.ndarray weights, gradients from autograd), face keras (inertia.SGD)"
    assert lines[2].startswith("optimizer: inertia.SGD(learning_rate=CosineDecay(")
    assert lines[3].startswith("ema_momentum 0.900 is derived from the run's 43 steps")
    figures = r"loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4} - lr: \d\.\d{4}"
    assert re.fullmatch(r"Epoch 1/1 - 43/43 - \d+\.\d\ds \d+[mu]s/step - " + figures, lines[4]), lines[4]
    assert re.match(r"train loss \d+\.\d{4} \(train accuracy \d+\.\d\d%\) after 1 epoch, 43 steps", lines[5])
    accuracy = re.match(r"test accuracy (\d+\.\d\d)% \(\d+/450\)", lines[6])
    assert accuracy, lines[6]
    assert float(accuracy.group(1)) >= 85.0


def test_missing_scikit_learn_exits_1_with_the_fix() -> None:
    hide_sklearn = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from inertia.cli import main; sys.exit(main(['demo']))"
    )
    done = _inertia(code=hide_sklearn)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "scikit-learn" in done.stderr and "pip install 'inertia[demo]'" in done.stderr


# --- in process: cheaper, for the argument handling --------------------------------------


@needs_sklearn
def test_quiet_demo_prints_only_the_results(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["demo", "--epochs", "1", "--seed", "1", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("train loss ") and lines[1].startswith("test accuracy ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "a command is required" in captured.err


@pytest.mark.parametrize(
    "args", [["demo", "--epochs", "0"], ["demo", "--epochs", "x"], ["demo", "--seed", "-1"], ["demo", "extra"]]
)
def test_bad_demo_arguments_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert "usage: inertia" in capsys.readouterr().err


def test_console_script_is_declared() -> None:
    try:
        distribution = importlib.metadata.distribution("inertia")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("inertia is not installed, so it has no console script")
    scripts = [ep for ep in distribution.entry_points if ep.group == "console_scripts"]
    assert [(ep.name, ep.value) for ep in scripts] == [("inertia", "inertia.cli:main")]


@pytest.mark.parametrize("args, message", [
    (["--face", "torch"], "inertia demo: error: --face torch: inertia.torch.SGD steps torch tensors only, so it needs "
                          "the torch backend (--backend torch), not numpy"),
    (["--backend", "jax", "--face", "torch", "--compare"], "--face torch: inertia.torch.SGD steps torch tensors only"),
    (["--face", "legacy", "--ema-momentum", "0.5"],
     "--ema-momentum 0.5: the legacy face keeps no moving average of the weights (tf_keras.optimizers.legacy.SGD has "
     "none); only the keras, torch and tf_keras faces do"),
    (["--backend", "tensorflow", "--face", "torch"],
     "inertia demo: error: --face torch: inertia.torch.SGD steps torch tensors only, so it needs the torch backend "
     "(--backend torch), not tensorflow"),
    (["--backend", "mlx"], "argument --backend: invalid choice: 'mlx'"),
    (["--face", "optax"], "argument --face: invalid choice: 'optax'"),
])
def test_demo_combinations_that_cannot_run_are_usage_errors(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *args])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: inertia demo ")
    assert message in captured.err


def test_demo_compare_without_the_reference_exits_1_naming_what_to_install() -> None:
    hide_tf_keras = (
        "import sys; sys.modules['tf_keras'] = None\n"
        "from inertia.cli import main; sys.exit(main(['demo', '--face', 'legacy', '--compare']))"
    )
    done = _inertia(code=hide_tf_keras)
    assert done.returncode == 1
    assert done.stdout == ""  # nothing trained
    assert done.stderr == (
        "inertia demo: error: comparing the legacy face with tf_keras.optimizers.legacy.SGD needs tf_keras "
        "(tf.keras' legacy optimizers, on TensorFlow): pip install tf-keras\n"
    )


@needs_sklearn
def test_demo_compare_prints_the_agreement_and_plots_both_systems(tmp_path) -> None:
    requires("mlx.optimizers")
    requires("matplotlib")
    done = subprocess.run(
        [sys.executable, "-m", "inertia", "demo", "--epochs", "1", "--face", "mlx", "--compare", "--plot", "demo.png"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": _SRC},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[5].startswith("compare: mlx.optimizers.SGD (MLX ")
    assert lines[6].startswith("Epoch 1/1 - 43/43 - ")
    assert lines[7] == "  vs mlx.optimizers.SGD: max abs difference of the weights 0, of the step losses 0"
    assert lines[-2] == ("verdict: bit-identical: inertia.mlx.SGD and mlx.optimizers.SGD gave the same weights after "
                         "each of the 43 steps, the same loss at each")
    assert lines[-1] == "wrote demo.png"
    png = (tmp_path / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@needs_sklearn
def test_demo_on_tensorflow_compares_with_tf_keras_bit_for_bit_and_keeps_stderr_clean() -> None:
    """TensorFlow's start-up notices (oneDNN, CUDA probing) are written by its C++ logging
    whatever TF_CPP_MIN_LOG_LEVEL says; the demo keeps them off stderr."""
    load_backend("tensorflow")
    requires("tf_keras")
    done = _inertia("demo", "--backend", "tensorflow", "--face", "legacy", "--compare", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[1] == ("backend tensorflow (tf.Variable weights (tf.Tensor trees for the mlx face), gradients from "
                        "tf.GradientTape under tf.function), face legacy (inertia.legacy.SGD)")
    assert lines[6].endswith("on tf.Variables: the demo's own arrays, nothing crosses")
    assert lines[8] == "  vs tf_keras.optimizers.legacy.SGD: max abs difference of the weights 0, of the step losses 0"
    assert lines[-1] == ("verdict: bit-identical: inertia.legacy.SGD and tf_keras.optimizers.legacy.SGD gave the same "
                         "weights after each of the 43 steps, the same loss at each")


@needs_sklearn
def test_demo_on_tensorflow_compares_with_keras_on_tensorflow_where_keras_backend_is_unset() -> None:
    """Importing TensorFlow imports Keras, on its default backend, TensorFlow: the demo's."""
    load_backend("tensorflow")
    requires("keras")
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env["PYTHONPATH"] = _SRC
    done = subprocess.run(
        [sys.executable, "-m", "inertia", "demo", "--backend", "tensorflow", "--face", "keras", "--compare", "--epochs", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    compare = next(line for line in lines if line.startswith("compare: "))
    assert compare.startswith("compare: keras.optimizers.SGD (Keras ")
    assert compare.endswith(", on its tensorflow backend: KERAS_BACKEND is unset: Keras' default, which is --backend's) "
                            "with the same options and keras.optimizers.schedules.CosineDecay")
    assert lines[-1] == ("verdict: bit-identical: inertia.SGD and keras.optimizers.SGD gave the same weights after each "
                         "of the 43 steps, the same loss at each and their moving averages at the end")


def test_demo_rejects_an_ema_momentum_outside_its_range() -> None:
    done = _inertia("demo", "--ema-momentum", "1.5")
    assert done.returncode == 2 and "--ema-momentum: must be in [0, 1), got '1.5'" in done.stderr


@needs_sklearn
def test_demo_writes_its_plot(tmp_path) -> None:
    requires("matplotlib")
    done = subprocess.run(
        [sys.executable, "-m", "inertia", "demo", "--epochs", "1", "--plot", "demo.png"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "wrote demo.png"
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_doctor_reports_the_kernels_the_cache_and_the_libraries(tmp_path) -> None:
    requires("jax")
    env_code = (
        "import os, sys; os.environ['INERTIA_CACHE_DIR'] = sys.argv[1]; os.environ.pop('INERTIA_KERNELS', None)\n"
        "from inertia import cli; sys.exit(cli.main(['doctor', '--strict']))"
    )
    done = subprocess.run([sys.executable, "-c", env_code, str(tmp_path / "cache")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": _SRC}, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in done.stdout.splitlines())
    assert rows["kernel (NumPy, CPU torch)"].startswith("compiled: ")
    assert rows["kernel (NumPy, CPU torch)"].endswith(".so")
    assert rows["kernel (JAX on the CPU)"].startswith(f"compiled: {tmp_path / 'cache'}")
    assert rows["kernel cache"] == f"{tmp_path / 'cache'} (private)"
    assert rows["numpy"] == importlib.metadata.version("numpy")
    assert rows["jax"] == importlib.metadata.version("jax")
    assert rows["INERTIA_CACHE_DIR"] == repr(str(tmp_path / "cache"))


def test_doctor_strict_fails_and_names_the_fix_when_a_kernel_is_unavailable(tmp_path) -> None:
    requires("jax")
    env = {**os.environ, "PYTHONPATH": _SRC, "CC": "/nonexistent/cc", "INERTIA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("INERTIA_KERNELS", None)
    done = subprocess.run([sys.executable, "-m", "inertia", "doctor", "--strict"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "kernel (JAX on the CPU)    unavailable: no C compiler (/nonexistent/cc" in done.stdout
    assert "C compiler                 not found (/nonexistent/cc" in done.stdout
    assert "slower than it could be: kernel (JAX on the CPU): unavailable: no C compiler" in done.stderr
    assert "PerformanceWarning" not in done.stderr  # the report says it; no warning on top
    plain = subprocess.run([sys.executable, "-m", "inertia", "doctor"], capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 0
    env["INERTIA_KERNELS"] = "0"  # turned off on purpose: nothing to fix
    off = subprocess.run([sys.executable, "-m", "inertia", "doctor", "--strict"], capture_output=True, text=True, env=env, timeout=300)
    assert off.returncode == 0 and "disabled by INERTIA_KERNELS" in off.stdout
