"""Faults: unwritable snapshot directories, a disk that fills up mid-write, exceptions and SIGKILL in the
middle of writing files and LMDBs, and a data prefetch thread whose decoder fails.

After each: a NetspecError with a clear message, every earlier file intact and loadable, and nothing left
behind that looks like a finished snapshot or database.
"""
import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from netspec.formats import binary, prototxt
from netspec.data import datum as D
from netspec.data.lmdb_io import LMDBReader, LMDBWriter, check_lmdb
from netspec.errors import DataError, NetspecError, SolverError
from netspec.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[2]

NET = """
name: "tiny"
layer { name: "input" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 dim: 4 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "conv1" bottom: "target" top: "loss" }
"""


def _solver(tmp_path, prefix, snapshot=2, **extra):
    from netspec.solver.solvers import Solver
    (tmp_path / "net.prototxt").write_text(NET)
    param = prototxt.parse_solver(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
        f'max_iter: 100\nsnapshot: {snapshot}\nrandom_seed: 1\ntype: "Adam"\n')
    param.snapshot_prefix = str(prefix)
    for k, v in extra.items():
        setattr(param, k, v)
    s = Solver(param)
    rng = np.random.default_rng(0)
    s.net.blobs["data"].data[...] = rng.standard_normal((2, 3, 5, 5))
    s.net.blobs["target"].data[...] = rng.standard_normal((2, 4, 5, 5))
    return s


def _snapshot_like(directory):
    """Files a resume could mistake for a snapshot (temporary files start with '.' and end in '.tmp')."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if p.name.endswith((".caffemodel", ".solverstate")) and not p.name.startswith("."))


def _leftover_temps(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


class _FillingFile(io.RawIOBase):
    """A file object for which the disk fills up after ``budget`` more bytes: ENOSPC mid-write."""

    def __init__(self, real, budget):
        self.real, self.budget = real, budget

    def write(self, b):
        b = memoryview(b).cast("B")
        if len(b) > self.budget:
            self.real.write(b[:self.budget])
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(b)
        return self.real.write(b)

    def writable(self):
        return True

    def fileno(self):
        return self.real.fileno()

    def close(self):
        if not self.closed:
            super().close()
            self.real.close()


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(budget)``: from now on, files opened with os.fdopen (what every netspec writer uses for its
    temporary file) can take ``budget`` more bytes, then raise ENOSPC."""
    real_fdopen = os.fdopen

    def arm(budget):
        def fdopen(fd, mode="r", *args, **kwargs):
            if "w" not in mode:
                return real_fdopen(fd, mode, *args, **kwargs)
            raw = _FillingFile(io.FileIO(fd, "w"), budget)
            if "b" in mode:
                return raw
            return io.TextIOWrapper(io.BufferedWriter(raw), encoding=kwargs.get("encoding", "utf-8"),
                                    newline=kwargs.get("newline"))
        monkeypatch.setattr(os, "fdopen", fdopen)
    return arm


# ============================================================================================== snapshots

def test_snapshot_disk_full_keeps_previous_snapshot(tmp_path, disk_full):
    snap = tmp_path / "snaps"
    s = _solver(tmp_path, snap / "tiny")
    s.step(2)  # snapshot at iter 2: complete
    assert _snapshot_like(snap) == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate"]
    before = {p.name: p.read_bytes() for p in snap.iterdir()}
    model_size = (snap / "tiny_iter_2.caffemodel").stat().st_size
    assert (snap / "tiny_iter_2.solverstate").stat().st_size > model_size  # Adam: two history sets
    # Each file may take `budget` bytes: fail at the start or middle of the caffemodel, or (the caffemodel
    # written whole) inside the solverstate.
    for budget in (0, model_size // 2, model_size):
        disk_full(budget)
        with pytest.raises(SolverError) as err:
            s.step(2)
        msg = str(err.value)
        assert "No space left on device" in msg and "tiny_iter_" in msg and "tiny_iter_2.solverstate" in msg
        assert "intact" in msg
        # The previous snapshot is untouched, nothing half-written remains, and no weights file without its
        # solver state pretends to be a snapshot.
        assert _snapshot_like(snap) == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate"], budget
        assert _leftover_temps(snap) == []
        assert {p.name: p.read_bytes() for p in snap.iterdir()} == before
    model = binary.read_caffemodel(snap / "tiny_iter_2.caffemodel")
    state = binary.read_solverstate(snap / "tiny_iter_2.solverstate")
    assert state.iter == 2 and [l.name for l in model.net.layer] == ["input", "conv1", "loss"]


def test_resume_from_snapshot_left_by_disk_full(tmp_path, disk_full, monkeypatch):
    snap = tmp_path / "snaps"
    s = _solver(tmp_path, snap / "tiny")
    s.step(2)
    weights = s.net.params["conv1"][0].data.copy()
    disk_full(50)
    with pytest.raises(SolverError):
        s.step(2)
    monkeypatch.undo()
    fresh = _solver(tmp_path, snap / "tiny")
    fresh.restore(str(snap / "tiny_iter_2.solverstate"))
    assert fresh.iter == 2
    np.testing.assert_array_equal(fresh.net.params["conv1"][0].data, weights)


@pytest.mark.parametrize("kind", ["file_in_the_way", "proc", "chmod"])
def test_unwritable_snapshot_directory(tmp_path, kind):
    if kind == "file_in_the_way":
        (tmp_path / "blocker").write_text("not a directory")
        prefix = tmp_path / "blocker" / "sub" / "tiny"
    elif kind == "proc":
        prefix = Path("/proc/netspec-no-such-dir/tiny")  # even root cannot create directories here
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            (ro / "probe").write_text("x")
        except OSError:
            pass
        else:
            ro.chmod(0o700)
            pytest.skip("running as root: permissions do not stop writes")
        prefix = ro / "tiny"
    s = _solver(tmp_path, prefix)
    try:
        with pytest.raises(SolverError, match=r"cannot write snapshot .*tiny_iter_2\.caffemodel: .*"
                                              r"previous snapshot \(none\) is intact"):
            s.step(2)
    finally:
        if kind == "chmod":
            (tmp_path / "ro").chmod(0o700)
    assert s.iter == 2  # the iterations ran; only the snapshot failed


# ============================================================================================== atomic writers

def _net_param():
    net = caffe_pb2.NetParameter(name="w")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.add().CopyFrom(binary.array_to_blob(np.arange(5000, dtype=np.float32).reshape(50, 100)))
    return net


WRITERS = {
    "write_text": (lambda p: prototxt.write_text(_net_param(), p), lambda p: prototxt.parse_net(Path(p))),
    "write_caffemodel": (lambda p: binary.write_caffemodel(p, _net_param()), binary.read_caffemodel),
    "write_net_binary": (lambda p: binary.write_net_binary(p, _net_param()), binary.read_net_binary),
    "write_solverstate": (lambda p: binary.write_solverstate(p, binary.SolverStateData(
        iter=3, learned_net="x", history=[np.ones((100, 100), np.float32)])), binary.read_solverstate),
    "write_blobproto": (lambda p: binary.write_blobproto(p, np.ones((3, 50, 50), np.float32)),
                        binary.read_blobproto),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
@pytest.mark.parametrize("failure", ["enospc-start", "enospc-middle", "interrupt"])
def test_writers_are_atomic(tmp_path, monkeypatch, disk_full, name, failure):
    write, read = WRITERS[name]
    path = tmp_path / f"out.{name}"
    write(path)
    old = path.read_bytes()
    read(path)
    if failure == "interrupt":  # Ctrl-C halfway through: a BaseException, not an OSError
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            f = real_fdopen(fd, *args, **kwargs)
            real_write = f.write

            def write_then_interrupt(b):
                real_write(b[:len(b) // 2])
                raise KeyboardInterrupt
            f.write = write_then_interrupt
            return f
        monkeypatch.setattr(os, "fdopen", fdopen)
        expected = KeyboardInterrupt
    else:
        disk_full(0 if failure == "enospc-start" else len(old) // 2)
        expected = OSError
    with pytest.raises(expected):
        write(path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    read(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


KILLED_WRITER = textwrap.dedent(r'''
    import sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    from netspec import binary
    path = sys.argv[2]
    real = binary._atomic_file
    import contextlib
    @contextlib.contextmanager
    def slow(p):
        with real(p) as f:
            class Slow:
                def write(self, b):
                    f.write(b); f.flush()
                    print("writing", flush=True)
                    import time; time.sleep(0.05)
            yield Slow()
    binary._atomic_file = slow
    arrays = [[np.full((256, 256), i, np.float32)] for i in range(200)]
    from netspec.proto import caffe_pb2
    net = caffe_pb2.NetParameter(name="big")
    for i in range(200):
        net.layer.add(name=f"l{i}", type="InnerProduct")
    binary.write_caffemodel(path, net, arrays)
''')


def test_sigkill_during_caffemodel_write_leaves_old_file(tmp_path):
    path = tmp_path / "model.caffemodel"
    binary.write_caffemodel(path, _net_param())
    old = path.read_bytes()
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(REPO), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # a few layers are on disk
            assert proc.stdout.readline().startswith("writing")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == old
    binary.read_caffemodel(path)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in (path.name, script.name)]
    # The killed writer's temporary file may remain, but it is hidden and cannot pass for a model.
    assert all(n.startswith(".model.caffemodel.") and n.endswith(".tmp") for n in leftovers), leftovers


# ============================================================================================== LMDB

def _datum(i):
    return D.array_to_datum(np.full((3, 4, 4), i, np.uint8), label=i).SerializeToString()


def test_lmdb_writer_exception_midway_leaves_no_database(tmp_path):
    path = tmp_path / "train_lmdb"
    with pytest.raises(RuntimeError, match="boom"):
        with LMDBWriter(path, commit_every=10) as w:
            for i in range(55):
                w.put(f"{i:08d}", _datum(i))
            raise RuntimeError("boom")
    assert not path.exists() and not Path(str(path) + ".partial").exists()
    with pytest.raises(DataError, match="not found"):
        check_lmdb(path)
    with pytest.raises(KeyboardInterrupt):
        with LMDBWriter(path, commit_every=10) as w:
            w.put("a", _datum(0))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


KILLED_PACKER = textwrap.dedent(r'''
    import sys, numpy as np
    sys.path.insert(0, sys.argv[1])
    from netspec.data.datum import array_to_datum
    from netspec.data.lmdb_io import LMDBWriter
    with LMDBWriter(sys.argv[2], commit_every=20) as w:
        for i in range(10 ** 6):
            w.put(f"{i:08d}", array_to_datum(np.full((3, 16, 16), i % 256, np.uint8), label=i))
            if i % 100 == 99:
                print(i + 1, flush=True)
''')


def test_sigkilled_packer_leaves_nothing_that_looks_complete(tmp_path):
    path = tmp_path / "train_lmdb"
    script = tmp_path / "packer.py"
    script.write_text(KILLED_PACKER)
    proc = subprocess.Popen([sys.executable, str(script), str(REPO), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        while int(proc.stdout.readline() or 10 ** 9) < 300:  # several commits are on disk
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists() and Path(str(path) + ".partial").is_dir()
    with pytest.raises(DataError, match=r"never finished.*\.partial.*run the conversion again"):
        check_lmdb(path)
    with pytest.raises(DataError, match="never finished"):
        LMDBReader(path)
    from netspec.net.pycaffe import Net, TEST
    text = f'layer {{ name: "d" type: "Data" top: "x" data_param {{ source: "{path}" batch_size: 1 }} }}'
    with pytest.raises(DataError, match=r"layer 'd'.*never finished"):
        Net(prototxt.parse_net(text), TEST)
    # Packing again replaces the leftover and gives a complete database.
    with LMDBWriter(path) as w:
        w.put("00000000", _datum(1))
    assert len(LMDBReader(path)) == 1 and not Path(str(path) + ".partial").exists()


# ============================================================================================== prefetch

@pytest.fixture
def small_db(tmp_path):
    path = tmp_path / "db"
    with LMDBWriter(path) as w:
        for i in range(6):
            w.put(f"{i:08d}_img{i}", _datum(i))
    return path


@pytest.mark.parametrize("prefetch", [0, 3])
def test_prefetch_decode_failure_names_the_record(small_db, monkeypatch, prefetch):
    from netspec.data.transform import DataTransformer
    from netspec.net.pycaffe import Net, TEST
    real = DataTransformer.datum_array

    def failing(self, d, key=None, *a, **kw):
        if key == b"00000003_img3":
            raise RuntimeError("decoder crashed")  # not a DataError: what a broken codec might raise
        return real(self, d, key, *a, **kw)
    monkeypatch.setattr(DataTransformer, "datum_array", failing)
    text = (f'layer {{ name: "data" type: "Data" top: "x" top: "y" '
            f'data_param {{ source: "{small_db}" batch_size: 2 prefetch: {prefetch} }} }}')
    net = Net(prototxt.parse_net(text), TEST)
    net.forward()  # records 0, 1
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        net.forward()  # records 2, 3
    msg = str(err.value)
    assert "layer 'data'" in msg and "record '00000003_img3'" in msg and "decoder crashed" in msg
    chain, e = [], err.value
    while e is not None:
        chain.append(type(e))
        e = e.__cause__
    assert RuntimeError in chain  # the original exception and its traceback stay attached
    assert time.perf_counter() - start < 5
    monkeypatch.undo()
    # The layer recovers: the prefetch thread was stopped, the next forward starts a new one.
    net.forward()


def test_reader_finalized_by_gc_inside_the_env_lock_does_not_deadlock(tmp_path, monkeypatch):
    """Found by the LMDB fuzzer: a prefetch thread opening an LMDB triggered garbage collection, which ran the
    __del__ of an unreachable reader (in a reference cycle); __del__ releases its environment under the same
    (non-reentrant) lock the opening thread held, and the process hung for good."""
    import gc
    import threading

    import lmdb
    dbs = []
    for name in ("a", "b"):
        with LMDBWriter(tmp_path / name) as w:
            w.put("k", _datum(1))
        dbs.append(tmp_path / name)
    r = LMDBReader(dbs[0])
    len(r)  # holds an environment
    r.cycle = r  # only the cycle collector frees it
    del r
    real_open = lmdb.open

    def open_with_gc(*args, **kwargs):
        gc.collect()  # what an allocation inside the lock may trigger
        return real_open(*args, **kwargs)
    monkeypatch.setattr(lmdb, "open", open_with_gc)
    done = []
    t = threading.Thread(target=lambda: done.append(LMDBReader(dbs[1]).first()), daemon=True)
    t.start()
    t.join(timeout=20)
    assert done and done[0][0] == b"k", "deadlock: the reader's finalizer waits for the lock its own thread holds"
