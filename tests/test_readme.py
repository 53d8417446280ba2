"""The README's examples run as written, each alone, and show the results they state.

Every ```python block runs in a fresh namespace, as a reader who copies one block would run
it. Blocks written as an interactive session (``>>>``) are doctests: the outputs they show
are checked. The others are scripts that must run without error. They need torch and jax
(required in CI).
"""

import doctest
import pathlib
import re

import pytest

from conftest import load_backend

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```$", TEXT, re.S | re.M)
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_every_python_block_is_found():
    assert len(BLOCKS) == TEXT.count("```python") and BLOCKS
    # The blocks that state results are checked as doctests, not merely run.
    assert sum(">>>" in block for block in BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_alone(index):
    for name in ("torch", "jax"):
        load_backend(name)
    block = BLOCKS[index]
    where = f"README.md example {index}"
    if ">>>" not in block:
        exec(compile(block, where, "exec"), {"__name__": f"readme_example_{index}"})
        return
    test = doctest.DocTestParser().get_doctest(block, {"__name__": f"readme_example_{index}"}, where, str(README), 0)
    assert test.examples, where
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{where}: {result.failed} of {result.attempted} examples differ (shown above)"
