"""Reproduce the README's benchmark table: ``python benchmarks/run.py`` (same as ``inertia bench``).

Writes ``benchmarks/results/<date>.json`` (every figure) and ``.md`` (the tables), and prints
the tables. Extra arguments go to ``inertia bench`` (``--help`` lists them; add
``--contenders ...,torch-compile`` to include torch.compile, which compiles for minutes).
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
