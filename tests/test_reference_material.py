"""The comparisons with the official code cannot silently vanish: without ../shared they
skip on a developer's machine but fail under CI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("ci", "outcome", "status"), [("true", "1 error", 1), ("", "1 skipped", 0)]
)
def test_missing_reference_material_fails_only_under_ci(tmp_path, ci, outcome, status):
    tests = tmp_path / "checkout" / "tests"  # no ../shared beside this checkout
    tests.mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", tests)
    (tests / "test_needs_shared.py").write_text("def test_it(shared_dir):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"CI": ci}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in result.stdout and result.returncode == status, result.stdout[-2000:]
