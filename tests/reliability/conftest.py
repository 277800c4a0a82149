"""Reliability suite: prints the fuzz counts (see fuzzkit.py) at the end of the run."""
import collections
import json
import os

import pytest

from fuzzkit import FUZZ_COUNTS


def pytest_terminal_summary(terminalreporter):
    if not FUZZ_COUNTS:
        return
    tr = terminalreporter
    tr.section("netspec fuzz counts")
    total = collections.Counter()
    for target in sorted(FUZZ_COUNTS):
        c = FUZZ_COUNTS[target]
        total.update(c)
        tr.write_line(f"{target:28s} inputs {c['inputs']:7d}  ok {c['ok']:7d}  NetspecError "
                      f"{c['netspec_error']:7d}  other {c['other']:3d}")
    tr.write_line(f"{'total':28s} inputs {total['inputs']:7d}  ok {total['ok']:7d}  NetspecError "
                  f"{total['netspec_error']:7d}  other {total['other']:3d}")
    path = os.environ.get("NETSPEC_FUZZ_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({k: dict(v) for k, v in sorted(FUZZ_COUNTS.items())}, f, indent=1)


@pytest.fixture
def fresh_cwd(tmp_path, monkeypatch):
    """Run the test inside an empty temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
