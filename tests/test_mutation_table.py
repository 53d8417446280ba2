"""The mutation check's table stays true to the source (the check itself is
``tools/mutation_check.py``, run by hand: it takes the suite's time per mutant)."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from mutants import MUTANTS  # noqa: E402


def test_mutant_ids_are_unique():
    ids = [mutant.id for mutant in MUTANTS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_still_applies_and_names_existing_tests(mutant):
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.find) == 1, f"{mutant.path} must hold the `find` text exactly once"
    assert mutant.replace != mutant.find and mutant.breaks
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
