"""The mutation check: does the test suite notice realistic mistakes in the source?

Each mutant in ``tools/mutants.py`` is one small change a developer could plausibly make (a
reassociated formula, a flipped comparison, a missing copy). For each, this script copies the
repository to a scratch folder, applies the change, and runs the mutant's own test files
there (``PYTHONPATH`` points at the copy's ``src``; the copy's extension is compiled in place,
again after each change to a C source; the XLA handler builds into a scratch cache). The suite must fail: the mutant is **killed**. A mutant whose tests pass is run
again on the whole suite before it is reported **survived**. Mutants known to change no
behaviour are listed as **equivalent** with the reason, and not run.

    python tools/mutation_check.py                  # every mutant
    python tools/mutation_check.py --only keras-    # mutants whose id starts with "keras-"
    python tools/mutation_check.py --list           # the table, nothing run
    python tools/mutation_check.py --json out.json  # also write the results as JSON

The tests run as in CI, with ``INERTIA_REQUIRE_BACKENDS=numpy,torch,jax,tensorflow`` unless the
environment sets it: a backend that is missing fails the baseline instead of letting
mutants survive behind skips.

Exit status: 0 when every non-equivalent mutant is killed, 1 when one survives, 2 when the
unmutated source fails (its own files, or the whole suite when a survivor needs it), a
mutant no longer applies to the source (its ``find`` text is gone or not unique), or a
mutant's run ends neither in failures nor in a pass (a time-out, a crash, a collection
error: reported as ``error`` for a person to look at).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from mutants import MUTANTS, Mutant  # noqa: E402

# pytest exit codes: 1 tests failed (killed); 0 all passed (survived); anything else means the
# run itself broke (an import error counts: a mutant that cannot even be imported is caught,
# but only by accident, so it is reported as such).
PYTEST_TESTS_FAILED = 1
PYTEST_ALL_PASSED = 0


def _tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.splitlines()
    return [name for name in listed if (ROOT / name).is_file()]


def _copy_repository(destination: pathlib.Path) -> None:
    for name in _tracked_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def _build_kernel(copy: pathlib.Path) -> None:
    """Compile the copy's extension in place, as ``pip install -e .`` does. A mutant that does
    not compile leaves the previous build, which the loader then refuses (its source digest no
    longer matches): the kernel tests fail, and the mutant counts as killed."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=copy, capture_output=True, timeout=600)


def _check_applies(mutant: Mutant) -> str | None:
    source = (ROOT / mutant.path).read_text()
    count = source.count(mutant.find)
    if count != 1:
        return f"{mutant.path}: `find` text occurs {count} times (must be exactly once)"
    return None


def _run_pytest(copy: pathlib.Path, cache: pathlib.Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy / "src"), environment.get("PYTHONPATH")]))
    environment["INERTIA_CACHE_DIR"] = str(cache)
    environment.setdefault("INERTIA_REQUIRE_BACKENDS", "numpy,torch,jax,tensorflow")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    # A session of its own, so that a time-out also ends what pytest started (benchmark workers).
    process = subprocess.Popen(
        command, cwd=copy, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return -1, "timed out", time.perf_counter() - start
    output = (stdout + stderr).strip().splitlines()
    failed = [line for line in output if line.startswith(("FAILED", "ERROR"))]
    summary = failed[0] if failed else (output[-1] if output else "")
    return process.returncode, summary, time.perf_counter() - start


# The table's own test fails on any mutated copy (its `find` text is gone): the whole-suite
# runs leave it out.
WHOLE_SUITE = ["--ignore=tests/test_mutation_table.py"]


class _WholeSuiteBaseline:
    """Whether the unmutated source passes the whole suite, run once, the first time a
    survivor needs the whole suite (a failure there would otherwise count as a kill)."""

    def __init__(self, copy: pathlib.Path, cache: pathlib.Path, timeout: float) -> None:
        self.copy, self.cache, self.timeout = copy, cache, timeout
        self.summary: str | None = None
        self.passed = False

    def check(self) -> bool:
        if self.summary is None:
            code, self.summary, seconds = _run_pytest(self.copy, self.cache, WHOLE_SUITE, self.timeout)
            self.passed = code == PYTEST_ALL_PASSED
            print(f"whole-suite baseline ({seconds:.0f} s): {self.summary}", flush=True)
        return self.passed


def run_mutant(mutant: Mutant, copy: pathlib.Path, cache: pathlib.Path, timeout: float, whole_suite: _WholeSuiteBaseline) -> dict:
    result = {"id": mutant.id, "path": mutant.path, "breaks": mutant.breaks}
    if mutant.equivalent:
        return {**result, "status": "equivalent", "detail": mutant.equivalent}
    problem = _check_applies(mutant)
    if problem:
        return {**result, "status": "stale", "detail": problem}
    target = copy / mutant.path
    original = target.read_text()
    compiled = mutant.path.endswith((".c", ".h"))
    target.write_text(original.replace(mutant.find, mutant.replace, 1))
    if compiled:
        _build_kernel(copy)
    try:
        code, summary, seconds = _run_pytest(copy, cache, list(mutant.tests), timeout)
        scope = "its tests"
        if code == PYTEST_ALL_PASSED:
            target.write_text(original)
            if compiled:
                _build_kernel(copy)
            if not whole_suite.check():
                return {**result, "status": "error", "detail": f"the unmutated source fails the whole suite: {whole_suite.summary}"}
            target.write_text(original.replace(mutant.find, mutant.replace, 1))
            if compiled:
                _build_kernel(copy)
            code, summary, more = _run_pytest(copy, cache, WHOLE_SUITE, timeout)
            seconds += more
            scope = "the whole suite"
    finally:
        target.write_text(original)
        if compiled:
            _build_kernel(copy)
    if code == PYTEST_TESTS_FAILED:
        status = "killed"
    elif code == PYTEST_ALL_PASSED:
        status = "survived"
    else:
        status = "error"
    return {**result, "status": status, "detail": f"{scope}: {summary}", "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutants whose id starts with this")
    parser.add_argument("--list", action="store_true", help="print the mutants and run nothing")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTANTS if m.id.startswith(args.only)]
    if not chosen:
        parser.error(f"no mutant id starts with {args.only!r}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.id:40s} {mutant.path:32s} {mutant.breaks}")
        return 0

    results = []
    with tempfile.TemporaryDirectory(prefix="inertia-mutants-") as scratch:
        copy, cache = pathlib.Path(scratch) / "repo", pathlib.Path(scratch) / "kernel-cache"
        _copy_repository(copy)
        _build_kernel(copy)
        # The unmutated source must pass the same tests, or a "kill" would mean nothing.
        baseline = sorted({test for mutant in chosen if not mutant.equivalent for test in mutant.tests})
        if not baseline:
            print("only equivalent mutants chosen: nothing to run")
            return 0
        code, summary, seconds = _run_pytest(copy, cache, baseline, args.timeout)
        print(f"baseline ({len(baseline)} test files, {seconds:.0f} s): {summary}", flush=True)
        if code != PYTEST_ALL_PASSED:
            print("the unmutated source fails its tests: fix that first", file=sys.stderr)
            return 2
        whole_suite = _WholeSuiteBaseline(copy, cache, args.timeout)
        for number, mutant in enumerate(chosen, 1):
            result = run_mutant(mutant, copy, cache, args.timeout, whole_suite)
            results.append(result)
            seconds = f" ({result['seconds']} s)" if "seconds" in result else ""
            print(f"[{number}/{len(chosen)}] {result['status']:10s} {mutant.id}{seconds}: {result['detail']}", flush=True)

    counts = {status: sum(r["status"] == status for r in results) for status in ("killed", "survived", "equivalent", "stale", "error")}
    print("\n" + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for result in results:
        if result["status"] in ("survived", "stale", "error"):
            print(f"  {result['status']}: {result['id']} ({result['path']}): {result['breaks']}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "results": results}, indent=2))
    if counts["stale"] or counts["error"]:
        return 2
    return 1 if counts["survived"] else 0


if __name__ == "__main__":
    sys.exit(main())
