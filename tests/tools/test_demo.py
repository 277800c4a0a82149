"""The README's main command, end to end: `python tools/train.py --solver solvers/demo.prototxt`.

The default run is shortened with --max-iter; the full run (the README's figure, mean IU >= 0.90) is marked
slow: `python -m pytest -m slow tests/tools/test_demo.py`."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _workdir(tmp_path):
    (tmp_path / "prototxt").mkdir()
    shutil.copytree(REPO / "prototxt" / "demo", tmp_path / "prototxt" / "demo")
    (tmp_path / "solvers").mkdir()
    shutil.copy(REPO / "solvers" / "demo.prototxt", tmp_path / "solvers" / "demo.prototxt")
    return tmp_path


def _train(cwd, *extra, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--solver", "solvers/demo.prototxt",
                           *extra], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _scores(stdout):
    return {k: float(v) for k, v in re.findall(r"^(overall accuracy|mean accuracy|mean IU|fwavacc) ([0-9.]+)$",
                                                stdout, re.M)}


def test_demo_command_short(tmp_path):
    cwd = _workdir(tmp_path)
    r = _train(cwd, "--max-iter", "40")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr
    assert "packed 400 train samples" in log                       # generated and packed on first use
    assert re.search(r"Iteration 20 \([0-9.e+-]+ iter/s, [0-9.e+-]+s/20 iters\), loss = [0-9.e+-]+", log)
    assert "Iteration 20, lr = 0.001" in log
    assert "Snapshotting to binary proto file snapshots/demo/demo_iter_40.caffemodel" in log
    assert "Optimization Done." in log
    assert (cwd / "snapshots" / "demo" / "demo_iter_40.solverstate").exists()
    s = _scores(r.stdout)
    assert set(s) == {"overall accuracy", "mean accuracy", "mean IU", "fwavacc"}
    assert 0.0 <= s["mean IU"] <= 1.0
    # Resume from our own snapshot continues the iteration count.
    r2 = _train(cwd, "--snapshot", "snapshots/demo/demo_iter_40.solverstate", "--max-iter", "60")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "Iteration 40, lr = 0.001" in r2.stderr
    assert (cwd / "snapshots" / "demo" / "demo_iter_60.caffemodel").exists()


@pytest.mark.slow
def test_demo_reaches_stated_mean_iu(tmp_path):
    r = _train(_workdir(tmp_path), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _scores(r.stdout)["mean IU"] >= 0.90
