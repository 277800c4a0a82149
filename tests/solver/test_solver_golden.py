"""Solver parity with BVLC Caffe: every iteration's params, the learning rate, the loss, snapshots and resume,
for every solver type, lr policy, iter_size, clip and regularisation case in ../shared/golden/solvers."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import netspec
from netspec.formats import binary
from netspec.solver.solvers import Solver, learning_rate

CASES = ["sgd_fixed", "sgd_step", "sgd_exp", "sgd_inv", "sgd_multistep", "sgd_poly", "sgd_sigmoid",
         "sgd_l2_decay", "sgd_l1_decay", "sgd_iter_size3", "sgd_clip_gradients", "nesterov", "adagrad",
         "rmsprop", "adadelta", "adam"]


def rel(a, b):
    a = np.asarray(a, np.float64).reshape(b.shape)
    d = np.linalg.norm(b)
    return np.linalg.norm(a - b) / d if d else np.linalg.norm(a)


def make_solver(case: Path, tmp_path: Path, monkeypatch):
    work = tmp_path / case.name
    work.mkdir()
    for f in ("solver.prototxt", "net.prototxt"):
        shutil.copy(case / f, work / f)
    monkeypatch.chdir(work)
    solver = Solver("solver.prototxt")
    solver.net.copy_from(str(case / "weights.caffemodel"))
    batches = np.load(case / "batches.npz")
    meta = json.loads((case / "meta.json").read_text())
    sub = {"k": 0}

    def feed(layer_index):
        if layer_index != 0:
            return
        it = solver.iter
        j = sub["k"] % meta["iter_size"]
        sub["k"] += 1
        solver.net.blobs["data"].data[...] = batches[f"iter{it}/sub{j}/data"]
        solver.net.blobs["label"].data[...] = batches[f"iter{it}/sub{j}/label"]
    solver.net.before_forward(feed)
    return solver, meta


def check_params(solver, params, k, tol=1e-5):
    bad = []
    for layer, blobs in solver.net.params.items():
        for i, b in enumerate(blobs):
            key = f"iter{k}/{layer}/{i}"
            e = rel(b.data, params[key])
            if e > tol:
                bad.append(f"{key}: {e:.3g}")
    assert not bad, bad


@pytest.mark.parametrize("name", CASES)
def test_trajectory(name, shared_dir, tmp_path, monkeypatch):
    case = shared_dir / "golden" / "solvers" / name
    solver, meta = make_solver(case, tmp_path, monkeypatch)
    params = np.load(case / "params.npz")
    check_params(solver, params, 0)
    for k in range(meta["iters"]):
        t = meta["trajectory"][k]
        rate, _ = learning_rate(solver.param, solver.iter, solver.current_step)
        assert rate == pytest.approx(t["lr_float32"], rel=1e-6), f"lr at iter {k}"
        solver.step(1)
        assert solver.smoothed_loss == pytest.approx(t["loss"], rel=1e-5)
        check_params(solver, params, k + 1)


@pytest.mark.parametrize("name", ["sgd_multistep", "adam", "adadelta", "nesterov"])
def test_resume_from_caffe_solverstate(name, shared_dir, tmp_path, monkeypatch):
    case = shared_dir / "golden" / "solvers" / name
    solver, meta = make_solver(case, tmp_path, monkeypatch)
    os.makedirs("snapshot", exist_ok=True)
    for f in ("snap_iter_6.caffemodel", "snap_iter_6.solverstate"):
        shutil.copy(case / "snapshot" / f, Path("snapshot") / f)
    solver.restore("snapshot/snap_iter_6.solverstate")
    assert solver.iter == 6
    params = np.load(case / "params.npz")
    check_params(solver, params, 6)
    solver.step(6)
    check_params(solver, params, 12)


def test_own_snapshot_resumes_in_fresh_solver(shared_dir, tmp_path, monkeypatch):
    case = shared_dir / "golden" / "solvers" / "sgd_step"
    solver, meta = make_solver(case, tmp_path, monkeypatch)
    solver.step(6)   # snapshot: 6 in the solver file writes snapshot/snap_iter_6.*
    state = binary.read_solverstate("snapshot/snap_iter_6.solverstate")
    caffe_state = binary.read_solverstate(str(case / "snapshot" / "snap_iter_6.solverstate"))
    assert state.iter == caffe_state.iter == 6
    assert state.current_step == caffe_state.current_step
    assert len(state.history) == len(caffe_state.history)
    for a, b in zip(state.history, caffe_state.history):
        assert rel(binary.blob_to_array(a), binary.blob_to_array(b)) < 1e-5
    solver2, _ = _fresh(case, monkeypatch)
    solver2.restore("snapshot/snap_iter_6.solverstate")
    solver2.step(6)
    check_params(solver2, np.load(case / "params.npz"), 12)


def _fresh(case, monkeypatch):
    solver = Solver("solver.prototxt")
    batches = np.load(case / "batches.npz")

    def feed(i):
        if i == 0:
            solver.net.blobs["data"].data[...] = batches[f"iter{solver.iter}/sub0/data"]
            solver.net.blobs["label"].data[...] = batches[f"iter{solver.iter}/sub0/label"]
    solver.net.before_forward(feed)
    return solver, None
