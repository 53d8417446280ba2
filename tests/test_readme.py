"""The README's examples run as written (they need torch and jax: required in CI)."""

import pathlib
import re

import pytest

from conftest import load_backend

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    for name in ("torch", "jax"):
        load_backend(name)
    namespace = {}
    for block in BLOCKS[: index + 1]:  # later examples build on earlier ones
        exec(compile(block, f"README.md example {index}", "exec"), namespace)
