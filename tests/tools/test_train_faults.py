"""Training survives SIGKILL (snapshots are atomic; resume works) and multi-process training averages
gradients as Caffe's multi-GPU solver does."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netspec.formats import binary

REPO = Path(__file__).resolve().parents[2]

NET = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "out"
  convolution_param { num_output: 4 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }
"""

WORKER = textwrap.dedent('''
    import sys, numpy as np, torch
    sys.path.insert(0, {repo!r})
    import torch.distributed as dist
    from netspec.solver.solvers import Solver
    rank, world, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    s = Solver("solver.prototxt")
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((4, 4, 5, 5))) for _ in range(5)]
    def feed(i):
        if i == 0:
            d, t = batches[s.iter]
            lo = rank * 2 if world > 1 else 0
            n = 2 if world > 1 else 4
            s.net.blobs["data"].reshape(n, 3, 5, 5); s.net.blobs["target"].reshape(n, 4, 5, 5)
            s.net.blobs["data"].data[...] = d[lo:lo + n]; s.net.blobs["target"].data[...] = t[lo:lo + n]
    s.net.before_forward(feed)
    s.step(5)
    if rank == 0:
        np.savez(out, **{{f"{{l}}/{{i}}": b.data for l, bs in s.net.params.items() for i, b in enumerate(bs)}})
    if world > 1:
        dist.destroy_process_group()
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp_path, extra="", lr=0.05):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: {lr}\nmomentum: 0.9\nlr_policy: "fixed"\nmax_iter: 1000\n'
        'random_seed: 3\nsnapshot_prefix: "snap/tiny"\n' + extra)
    (tmp_path / "worker.py").write_text(WORKER.format(repo=str(REPO)))


def test_two_gloo_processes_equal_one_process_on_combined_batch(tmp_path):
    _setup(tmp_path)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "worker.py", str(r), "2", "multi.npz"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-2000:]
    single = subprocess.run([sys.executable, "worker.py", "0", "1", "single.npz"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert set(a.files) == set(b.files) and a.files
    for k in a.files:
        assert np.linalg.norm(a[k] - b[k]) <= 1e-5 * np.linalg.norm(b[k]), k
    # and training actually moved the weights away from the seeded start
    init = subprocess.run([sys.executable, "-c", textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(REPO)!r})
        from netspec.solver.solvers import Solver
        s = Solver("solver.prototxt"); print(float(abs(s.net.params["conv1"][0].data).sum()))''')],
        cwd=tmp_path, capture_output=True, text=True)
    assert abs(float(init.stdout) - float(np.abs(b["conv1/0"]).sum())) > 1e-3


LOOP = textwrap.dedent('''
    import sys, numpy as np
    sys.path.insert(0, {repo!r})
    from netspec.solver.solvers import Solver
    s = Solver("solver.prototxt")
    if sys.argv[1] != "-":
        s.restore(sys.argv[1])
    def feed(i):
        if i == 0:  # the batch depends only on the iteration: a resumed run sees what the original saw
            rng = np.random.default_rng(1000 + s.iter)
            s.net.blobs["data"].data[...] = rng.standard_normal((2, 3, 5, 5))
            s.net.blobs["target"].data[...] = rng.standard_normal((2, 4, 5, 5))
    s.net.before_forward(feed)
    print("ready", flush=True)
    s.step(int(sys.argv[2]) - s.iter)
    np.savez(sys.argv[3], **{{f"{{l}}/{{i}}": b.data for l, bs in s.net.params.items() for i, b in enumerate(bs)}})
''')


def _kill_and_resume_trials(tmp_path, trials):
    _setup(tmp_path, "snapshot: 2\ndisplay: 0\n", lr=0.0005)
    script = tmp_path / "loop.py"
    script.write_text(LOOP.format(repo=str(REPO)))
    total = 40
    ref = subprocess.run([sys.executable, str(script), "-", str(total), "ref.npz"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    ref = np.load(tmp_path / "ref.npz")
    rng = np.random.default_rng(7)
    snap = tmp_path / "snap"
    for trial in range(trials):
        for f in snap.glob("*"):
            f.unlink()
        p = subprocess.Popen([sys.executable, str(script), "-", str(total), "killed.npz"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        states = sorted(snap.glob("*.solverstate"), key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        for st in states:  # every visible snapshot is complete and loadable
            assert len(binary.read_solverstate(st).history) == 4
            binary.read_caffemodel(snap / (st.stem + ".caffemodel"))
        start = str(states[-1]) if states else "-"
        r = subprocess.run([sys.executable, str(script), start, str(total), "resumed.npz"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        got = np.load(tmp_path / "resumed.npz")
        for k in ref.files:  # same weights as the uninterrupted run (CPU, deterministic)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=f"trial {trial}, {k}")


def test_sigkill_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    _kill_and_resume_trials(tmp_path, 3)


@pytest.mark.slow
def test_sigkill_then_resume_20_trials(tmp_path):
    _kill_and_resume_trials(tmp_path, 20)


def test_sigint_stops_with_final_snapshot_and_sighup_snapshots(tmp_path):
    """`--sigint_effect stop` (default) ends the run after the current iteration with a snapshot and
    'Optimization stopped early.'; `--sighup_effect snapshot` (default) snapshots and continues."""
    import shutil
    (tmp_path / "prototxt").mkdir()
    shutil.copytree(REPO / "prototxt" / "demo", tmp_path / "prototxt" / "demo")
    (tmp_path / "solvers").mkdir()
    text = (REPO / "solvers" / "demo.prototxt").read_text()
    (tmp_path / "solvers" / "demo.prototxt").write_text(text.replace("display: 20", "display: 1"))
    p = subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), "--solver", "solvers/demo.prototxt"],
                         cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen_hup = False
    lines = []
    for line in p.stderr:
        lines.append(line)
        if not seen_hup and "Iteration 3 (" in line:
            p.send_signal(signal.SIGHUP)
            seen_hup = True
        if "Iteration 12 (" in line:
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=300)
    log = "".join(lines) + err
    assert p.returncode == 0, log[-3000:]
    assert "Optimization stopped early." in log
    snaps = sorted(int(f.stem.rsplit("_", 1)[1]) for f in (tmp_path / "snapshots" / "demo").glob("*.solverstate"))
    assert len(snaps) == 2 and 3 <= snaps[0] < snaps[1] <= 14, snaps   # one from SIGHUP, one final
    assert snaps[1] < 2000
