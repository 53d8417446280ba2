"""PNG figures of a demo run and of a benchmark report, drawn with matplotlib (the ``plot``
extra: ``pip install 'inertia[plot]'``), imported only when a figure is asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

__all__ = ["MissingPlotLibraryError", "pyplot", "plot_demo", "plot_bench"]


class MissingPlotLibraryError(ImportError):
    """matplotlib is not installed."""


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only; MissingPlotLibraryError (naming the extra)
    when matplotlib is not installed, so a command can check before it starts its work."""
    try:
        import matplotlib
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        raise MissingPlotLibraryError(
            "--plot needs matplotlib, which is not installed: pip install 'inertia[plot]'"
        ) from error
    matplotlib.use("Agg")  # files only: no display is needed, or opened
    import matplotlib.pyplot as plt

    return plt


def plot_demo(result: dict, path: Union[str, Path]) -> Path:
    """Loss and learning rate per step, accuracy per epoch (train and validation) of a
    :func:`inertia.demo.run` result, as a PNG at ``path``. A result of ``compare=True`` also
    has the reference system's loss and learning rate per step drawn over inertia's, dashed
    (where the two are bit-identical the dashes lie exactly on inertia's line)."""
    plt = pyplot()
    figure, (losses, accuracy, rates) = plt.subplots(3, 1, figsize=(8, 9), sharex=False)
    comparison = result.get("comparison")
    ours = result.get("optimizer", "inertia")
    steps = range(1, len(result["step_losses"]) + 1)
    losses.plot(steps, result["step_losses"], linewidth=0.8, color="tab:blue", label=f"{ours}: training loss (each step)")
    if comparison:
        losses.plot(steps, comparison["step_losses"], linewidth=1.2, linestyle=(0, (4, 3)), color="tab:red",
                    label=f"{comparison['reference']}: training loss (each step)")
    per_epoch = [len(result["step_losses"]) // len(result["metrics"]) * (k + 1) for k in range(len(result["metrics"]))]
    losses.plot(per_epoch, [m["val_loss"] for m in result["metrics"]], marker="o", color="tab:orange",
                label=f"{ours}: validation loss (each epoch)")
    losses.set_yscale("log")
    losses.set_xlabel("step")
    losses.set_ylabel("cross-entropy")
    losses.legend(fontsize=8)
    epochs = range(1, len(result["metrics"]) + 1)
    accuracy.plot(epochs, [m["accuracy"] for m in result["metrics"]], marker="o", label="training")
    accuracy.plot(epochs, [m["val_accuracy"] for m in result["metrics"]], marker="o", label="validation")
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel(f"accuracy ({ours})")
    accuracy.legend(fontsize=8)
    rates.plot(steps, result["step_learning_rates"], color="tab:blue", label=ours)
    if comparison:
        rates.plot(steps, comparison["step_learning_rates"], linewidth=1.2, linestyle=(0, (4, 3)), color="tab:red",
                   label=comparison["reference"])
        rates.legend(fontsize=8)
    rates.set_xlabel("step")
    rates.set_ylabel("learning rate")
    final_model = "moving average of the weights" if result.get("ema_momentum") is not None else "last weights"
    title = f"inertia demo: {result['epochs']} epochs, test accuracy {result['test_accuracy']:.2%} ({final_model})"
    if comparison:
        agreement = "bit-identical" if comparison["bit_identical"] else (
            f"weights within {comparison['weights']:.1e}, losses within {comparison['loss']:.1e}"
        )
        title += f"\n{ours} vs {comparison['reference']}: {agreement}"
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_bench(report: dict, path: Union[str, Path]) -> Path:
    """Step time per contender, one panel per workload and configuration of an
    :func:`inertia.bench.run` report (inertia's faces in blue), with the memory's floor for the
    configuration's bytes at the probe's bandwidth drawn as a line; as a PNG at ``path``."""
    plt = pyplot()
    cells = list(dict.fromkeys((r["workload"], r["config"]) for r in report["results"]))
    if not cells:
        raise ValueError("The report holds no results to plot.")
    figure, axes = plt.subplots(len(cells), 1, figsize=(9, 2.2 + 0.32 * len(report["results"])), squeeze=False)
    for axis, (workload, config) in zip(axes[:, 0], cells):
        rows = sorted((r for r in report["results"] if (r["workload"], r["config"]) == (workload, config)),
                      key=lambda r: r["median_ms"])
        names = [r["contender"] for r in rows]
        colors = ["tab:blue" if name.startswith("inertia") else "tab:gray" for name in names]
        axis.barh(names, [r["median_ms"] for r in rows], color=colors)
        axis.invert_yaxis()
        # the configuration's bytes at the probe's bandwidth: the same for every row
        floor = rows[0]["median_ms"] * rows[0]["of_bandwidth"]
        axis.axvline(floor, color="black", linestyle="--", linewidth=1, label="memory floor at the probe's bandwidth")
        axis.legend(loc="lower right", fontsize=8)
        axis.set_title(f"{workload} {config}: ms per step (shorter is faster)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

