"""tools/train.py's loader and memory flags: --loader-workers/--loader-kind choose the data layers' workers,
--checkpoint-activations trains with recomputed activations; a run with them equals a run without."""
import os

import numpy as np

import netspec
from netspec import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _solver_copy(tmp, prefix):
    """solvers/demo.prototxt with 3 iterations, snapshot at the end under ``prefix``."""
    from netspec import prototxt
    sp = prototxt.read_solver(os.path.join(ROOT, "solvers", "demo.prototxt"))
    sp.train_net = os.path.join(ROOT, sp.train_net)
    sp.test_net[0] = os.path.join(ROOT, sp.test_net[0])
    sp.max_iter, sp.snapshot, sp.snapshot_prefix, sp.test_interval = 3, 3, str(tmp / prefix), 1000
    sp.random_seed = 7  # the same initial weights in both runs
    path = tmp / f"{prefix}.prototxt"
    prototxt.write_text(sp, str(path))
    return str(path)


def _weights(path):
    net = netspec.Net(os.path.join(ROOT, "prototxt", "demo", "deploy.prototxt"), netspec.TEST, weights=path)
    return {k: [b.data.copy() for b in v] for k, v in net.params.items()}


def test_loader_and_checkpoint_flags_train_the_same_net(in_demo, tmp_path, monkeypatch):
    # set through monkeypatch, so that what train.main writes into os.environ is undone after the test
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "1")
    monkeypatch.setenv("NETSPEC_LOADER_KIND", "thread")
    assert train.main(["--solver", _solver_copy(tmp_path, "plain"), "--quiet", "--loader-workers", "0"]) == 0
    assert train.main(["--solver", _solver_copy(tmp_path, "flags"), "--quiet", "--loader-workers", "2",
                       "--loader-kind", "process", "--checkpoint-activations"]) == 0
    assert os.environ["NETSPEC_LOADER_WORKERS"] == "2" and os.environ["NETSPEC_LOADER_KIND"] == "process"
    a, b = _weights(str(tmp_path / "plain_iter_3.caffemodel")), _weights(str(tmp_path / "flags_iter_3.caffemodel"))
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6, err_msg=name)


def test_negative_loader_workers_is_refused(in_demo, netspec_log):
    assert train.main(["--solver", os.path.join(ROOT, "solvers", "demo.prototxt"), "--loader-workers", "-1"]) != 0
    assert any("--loader-workers -1" in m for m in netspec_log)
