"""``--plot``: the demo's and the benchmark's PNG figures (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import requires

from inertia import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _image(path):
    image = requires("matplotlib.image").imread(path)
    return image.shape


def test_the_demo_figure_is_a_png_of_its_three_panels(tmp_path):
    requires("sklearn")
    from inertia import demo

    result = demo.run(epochs=2, seed=0, quiet=True)
    assert len(result["step_losses"]) == len(result["step_learning_rates"]) == result["steps"]
    assert result["step_learning_rates"][0] == pytest.approx(0.05) and result["step_learning_rates"][-1] < 0.001
    path = plots.plot_demo(result, tmp_path / "demo.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert _image(path)[:2] == (900, 800)


def _reference_pixels(path) -> int:
    """Pixels of the reference system's curves: matplotlib's tab:red (214, 39, 40), which
    nothing else in the demo's figure uses."""
    import numpy as np

    image = requires("matplotlib.image").imread(path)[..., :3]
    return int(np.sum(np.all(np.abs(image - np.array([214, 39, 40]) / 255) < 0.02, axis=-1)))


def test_under_compare_the_demo_figure_overlays_the_reference_curves(tmp_path):
    requires("sklearn")
    requires("mlx.optimizers")
    from inertia import demo

    plain = plots.plot_demo(demo.run(epochs=1, seed=0, quiet=True, face="mlx"), tmp_path / "plain.png")
    result = demo.run(epochs=1, seed=0, quiet=True, face="mlx", compare=True)
    compared = plots.plot_demo(result, tmp_path / "compared.png")
    data = compared.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert _image(compared)[:2] == (900, 800)
    assert _reference_pixels(plain) == 0
    # two dashed curves (loss and learning rate) and their two legend entries; the dashes lie
    # on inertia's bit-identical curves, drawn after them
    assert _reference_pixels(compared) > 300  # about 650 at this size


def test_the_benchmark_figure_has_a_panel_per_workload_and_configuration(tmp_path):
    row = lambda workload, config, name, ms: {  # noqa: E731
        "workload": workload, "config": config, "contender": name, "median_ms": ms, "of_bandwidth": 0.5,
    }
    report = {"results": [row("W1", "plain", "inertia-numpy", 10.0), row("W1", "plain", "torch-fused", 11.0),
                          row("W3", "everything", "inertia-numpy", 4.0)]}
    path = plots.plot_bench(report, tmp_path / "bench.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    height, width = _image(path)[:2]
    assert width == 900 and height == round(100 * (2.2 + 0.32 * 3))
    with pytest.raises(ValueError, match="no results"):
        plots.plot_bench({"results": []}, tmp_path / "empty.png")


@pytest.mark.parametrize("command", [["demo", "--plot", "x.png"], ["bench", "--plot", "x.png"]])
def test_plot_without_matplotlib_says_which_extra_to_install(tmp_path, command):
    code = f"import sys; sys.modules['matplotlib'] = None\nfrom inertia.cli import main; sys.exit(main({command!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode in (1, 2) and done.stdout == ""
    assert "needs matplotlib, which is not installed: pip install 'inertia[plot]'" in done.stderr
    assert not (tmp_path / "x.png").exists()
