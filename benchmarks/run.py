"""Reproduce the README's benchmark table: ``python benchmarks/run.py`` (same as ``inertia bench``).

Writes ``benchmarks/results/<date>.json`` (every figure) and ``.md`` (the tables), and prints
the tables. Extra arguments go to ``inertia bench`` (``--help`` lists them). torch.compile
runs on W1 and W2 (about 25 s of compiling each configuration); on W3 it is reported as not
run (``inertia.bench.NOT_RUN``). inertia-legacy and inertia-mlx-face are reported as not run
with everything on: their APIs have no weight decay, clipnorm or EMA
(``inertia.bench.NOT_RUN_CONFIGS``).
"""

import sys
import time
from pathlib import Path

from inertia.cli import main

if __name__ == "__main__":
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    stem = out / time.strftime("%Y-%m-%d")
    sys.exit(main(["bench", "--json", f"{stem}.json", "--markdown", f"{stem}.md", *sys.argv[1:]]))
