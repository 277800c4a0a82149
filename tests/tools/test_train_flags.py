"""tools/train.py's loader and memory flags: --loader-workers/--loader-kind choose the data layers' workers,
--checkpoint-activations trains with recomputed activations; a run with them equals a run without."""
import os

import numpy as np

import netspec
from netspec.tools import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _solver_copy(tmp, prefix):
    """solvers/demo.prototxt with 3 iterations, snapshot at the end under ``prefix``."""
    from netspec.formats import prototxt
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
    from netspec.data import workers
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "1")
    monkeypatch.setenv("NETSPEC_LOADER_KIND", "thread")
    made = []
    real_init = workers.Loader.__init__

    def spy(self, source, n, *args, **kw):
        made.append((n, args[1] if len(args) > 1 else kw.get("kind")))
        real_init(self, source, n, *args, **kw)
    monkeypatch.setattr(workers.Loader, "__init__", spy)
    assert train.main(["--solver", _solver_copy(tmp_path, "plain"), "--quiet", "--loader-workers", "0"]) == 0
    assert made == []                          # --loader-workers 0: loaded in forward
    assert train.main(["--solver", _solver_copy(tmp_path, "flags"), "--quiet", "--loader-workers", "2",
                       "--loader-kind", "process", "--checkpoint-activations"]) == 0
    assert (2, "process") in made
    # passed to the loaders, not through os.environ, and over with the run
    assert os.environ["NETSPEC_LOADER_WORKERS"] == "1" and os.environ["NETSPEC_LOADER_KIND"] == "thread"
    assert workers.loader_workers() == 1 and workers.loader_kind() == "thread"
    a, b = _weights(str(tmp_path / "plain_iter_3.caffemodel")), _weights(str(tmp_path / "flags_iter_3.caffemodel"))
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6, err_msg=name)


def test_negative_loader_workers_is_refused(in_demo, netspec_log):
    assert train.main(["--solver", os.path.join(ROOT, "solvers", "demo.prototxt"), "--loader-workers", "-1"]) != 0
    assert any("--loader-workers -1" in m for m in netspec_log)


def test_several_gpus_outside_torchrun_start_one_process_each(monkeypatch):
    import torch
    args = lambda gpu: train.build_parser().parse_args(["--solver", "s.prototxt"] + (["--gpu", gpu] if gpu else []))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert train._wants_launch(args("0,1")) == 2
    assert train._wants_launch(args("all")) == 4
    assert train._wants_launch(args("2")) == 0 and train._wants_launch(args(None)) == 0
    monkeypatch.setenv("LOCAL_RANK", "0")  # a process started by torchrun (or by launch) trains itself
    assert train._wants_launch(args("0,1")) == 0
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA: one CPU process, as before
    assert train._wants_launch(args("0,1")) == 0


def test_launch_runs_the_command_in_several_processes(in_demo, tmp_path, monkeypatch):
    # what --gpu 0,1 does on a CUDA machine, here with two CPU processes (gloo)
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    solver = _solver_copy(tmp_path, "multi")
    assert train.launch(2, ["--solver", solver, "--quiet"]) == 0
    assert os.path.exists(tmp_path / "multi_iter_3.caffemodel")  # rank 0 snapshots
    assert train.launch(2, ["--solver", str(tmp_path / "missing.prototxt"), "--quiet"]) == 1


def test_test_iter_overrides_the_solvers_test_passes(in_demo, tmp_path, capsys, netspec_log, monkeypatch):
    from netspec.solver.solvers import Solver
    passes, real = [], Solver.test
    monkeypatch.setattr(Solver, "test", lambda self, i, **kw: passes.append(self.param.test_iter[i]) or
                        real(self, i, **kw))
    solver = _solver_copy(tmp_path, "ti")
    assert train.main(["--solver", solver, "--test-iter", "2"]) == 0
    assert passes == [2]  # the final scoring pass over 2 batches, not the solver's test_iter
    assert "mean IU" in capsys.readouterr().out
    # announced before it runs, with the way to make it shorter
    assert any("Scoring test net #0 after training: 2 batches (set --test-iter N for fewer)" in m
               for m in netspec_log)
    netspec_log.clear()
    assert train.main(["--solver", solver, "--test-iter", "0", "--quiet"]) == 0
    assert "mean IU" not in capsys.readouterr().out  # no test batches: no final scores
    assert train.main(["--solver", solver, "--test-iter", "-1"]) != 0
    assert any("--test-iter -1" in m for m in netspec_log)


def test_a_pycaffe_solver_scores_from_its_last_test_pass(in_demo, tmp_path, monkeypatch):
    """solve() then finish(), as a script without tools/train.py: the test pass at the final iteration already
    kept its confusion matrix, so finish() prints the scores of that pass and runs no other."""
    import io

    from netspec.formats import prototxt
    from netspec.solver.solvers import Solver
    path = _solver_copy(tmp_path, "py")
    sp = prototxt.read_solver(path)
    sp.test_interval, sp.test_iter[0] = 3, 2  # a test pass at the last iteration
    prototxt.write_text(sp, path)
    solver = Solver(path)
    passes, real = [], Solver.test
    monkeypatch.setattr(Solver, "test", lambda self, i, **kw: passes.append(i) or real(self, i, **kw))
    solver.solve()
    out = io.StringIO()
    scores = solver.finish(out)
    assert passes == [0] and len(scores) == 1 and "mean IU" in out.getvalue()
    assert ">>> Iteration 3 test net #0: the Test net output pass above: 2 batches" in out.getvalue()
