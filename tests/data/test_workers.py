"""Loader workers (netspec.data.workers): the same batches in the same order with 0, 1 or 2 workers, threads or
processes, for Data, ImageData and SegDataLayer; resuming from a pickle; a worker that fails or dies."""
import os
import pickle
import signal

import cv2
import numpy as np
import pytest

import netspec
from netspec.data.datum import encode_image, encoded_datum
from netspec.data.lmdb_io import LMDBWriter
from netspec.data.synthetic import pack
from netspec.data.workers import BatchTask, Loader, loader_kind, loader_workers
from netspec.errors import DataError
from netspec.net.pycaffe import Net

CONFIGS = [("0", "thread"), ("1", "thread"), ("2", "thread"), ("2", "process")]


def _image(rng, h=12, w=14):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_labelled_db(path, n, h=12, w=14):
    """An LMDB of ``n`` random PNG-encoded Datums, record i labelled i (keys in label order); returns ``path``."""
    rng = np.random.default_rng(0)
    with LMDBWriter(path) as writer:
        for i in range(n):
            d = encoded_datum(encode_image(_image(rng, h, w), "png"), label=i)
            writer.put(f"{i:08d}", d.SerializeToString())
    return path


@pytest.fixture(scope="module")
def jpeg_db(tmp_path_factory):
    return write_labelled_db(tmp_path_factory.mktemp("workers") / "db", 10)


def _data_net(tmp_path, db, phase=netspec.TRAIN, prefetch=2):
    p = tmp_path / "data.prototxt"
    p.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                 f'transform_param {{ crop_size: 8 mirror: true mean_value: 100 scale: 0.5 }} '
                 f'data_param {{ source: "{db}" batch_size: 3 prefetch: {prefetch} }} }}')
    netspec.set_random_seed(5)
    return Net(str(p), phase)


def _batches(net, n, tops=("data", "label")):
    out = []
    for _ in range(n):
        net.forward()
        out.append(tuple(net.blobs[t].data.copy() for t in tops))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)


def _use(monkeypatch, workers, kind):
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", workers)
    monkeypatch.setenv("NETSPEC_LOADER_KIND", kind)


def test_data_layer_same_batches_with_any_workers(jpeg_db, tmp_path, monkeypatch):
    runs = {}
    for workers, kind in CONFIGS:
        _use(monkeypatch, workers, kind)
        runs[workers, kind] = _batches(_data_net(tmp_path, jpeg_db), 8)  # 24 records: wraps the 10-record DB twice
    ref = runs["0", "thread"]
    for k, v in runs.items():
        _same(ref, v)
    labels = np.concatenate([b[1] for b in ref])
    assert labels.tolist() == [i % 10 for i in range(24)]  # DB order, wrapping around
    crops = {b[0][i].tobytes() for b in ref for i in range(3)}
    assert len(crops) > 10  # the crops and flips are random (and the same in every run)


def test_batches_do_not_depend_on_prefetch_depth_or_phase_rng(jpeg_db, tmp_path, monkeypatch):
    _use(monkeypatch, "2", "thread")
    a = _batches(_data_net(tmp_path, jpeg_db, prefetch=1), 4)
    b = _batches(_data_net(tmp_path, jpeg_db, prefetch=6), 4)
    _same(a, b)


def test_prefetch_zero_loads_inline(jpeg_db, tmp_path, monkeypatch):
    import threading
    _use(monkeypatch, "2", "thread")
    net = _data_net(tmp_path, jpeg_db, prefetch=0)
    net.forward()
    assert not [t for t in threading.enumerate() if t.name.startswith("netspec-prefetch") and str(tmp_path) in t.name]


def test_image_data_shuffle_same_with_any_workers(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    lines = []
    for i in range(7):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), _image(rng, 10 + i, 12))
        lines.append(f"im{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "n.prototxt").write_text(
        f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" '
        f'transform_param {{ crop_size: 9 mirror: true }} '
        f'image_data_param {{ source: "{tmp_path / "list.txt"}" root_folder: "{tmp_path}/" batch_size: 2 '
        f'shuffle: true }} }}')
    runs = []
    for workers, kind in CONFIGS:
        _use(monkeypatch, workers, kind)
        netspec.set_random_seed(3)
        runs.append(_batches(Net(str(tmp_path / "n.prototxt"), netspec.TRAIN), 9))  # 18 images: 3 epochs
    for r in runs[1:]:
        _same(runs[0], r)
    labels = np.concatenate([b[1] for b in runs[0]]).astype(int).tolist()
    assert sorted(labels[:7]) == list(range(7)) and labels[:7] != labels[7:14]  # reshuffled each epoch


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "ds"
    pack(str(root), n_train=5, n_val=1, size=24)
    return root


def _seg_net(tmp_path, root, **params):
    ps = dict(source=str(root / "train"), batch_size=2, mean=(0, 0, 0), crop=16, scale_jitter=(0.8, 1.3),
              rotate=15, seed=7, **params)
    (tmp_path / "seg.prototxt").write_text(
        'layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "netspec.data.seg" '
        f'layer: "SegDataLayer" param_str: "{repr(ps)}" }} }}')
    return Net(str(tmp_path / "seg.prototxt"), netspec.TRAIN)


def test_seg_layer_same_batches_with_any_workers(seg_root, tmp_path, monkeypatch):
    runs = []
    for workers, kind in CONFIGS:
        monkeypatch.setenv("NETSPEC_LOADER_KIND", kind)
        runs.append(_batches(_seg_net(tmp_path, seg_root, workers=int(workers)), 6))  # 12 pairs: 2+ epochs
    for r in runs[1:]:
        _same(runs[0], r)
    for data, label in runs[0]:
        assert data.shape == (2, 3, 16, 16) and label.shape == (2, 1, 16, 16)
        assert set(np.unique(label).tolist()) <= {0, 1, 2, 3, 255}


@pytest.mark.parametrize("workers,kind", [("2", "thread"), ("2", "process")])
def test_pickled_layer_resumes_where_the_consumer_is(jpeg_db, tmp_path, monkeypatch, workers, kind):
    _use(monkeypatch, "0", "thread")
    ref = _batches(_data_net(tmp_path, jpeg_db), 6)
    _use(monkeypatch, workers, kind)
    net = _data_net(tmp_path, jpeg_db)
    first = _batches(net, 2)
    mod = net.module.get_module(0)
    clone = pickle.loads(pickle.dumps(mod))  # the workers' read-ahead is dropped, the position kept
    rest = [tuple(t.numpy() for t in clone()) for _ in range(4)]
    _same(ref, first + rest)
    _same(ref[2:4], _batches(net, 2))  # the original goes on from where it was


def test_seg_layer_copy_resumes(seg_root, tmp_path, monkeypatch):
    import copy
    monkeypatch.setenv("NETSPEC_LOADER_KIND", "thread")
    ref = _batches(_seg_net(tmp_path, seg_root, workers=0), 4)
    net = _seg_net(tmp_path, seg_root, workers=2)
    first = _batches(net, 1)
    clone = copy.deepcopy(net.module.get_module(0).layer)
    rest = []
    for _ in range(3):
        data, label = clone._peek()
        clone._next = None
        rest.append((data.copy(), label.copy()))
    _same(ref, first + rest)
    _same(ref[1:3], _batches(net, 2))


@pytest.fixture
def failing_record(monkeypatch):
    """The decoder raises on record 00000004 (not a DataError: what a broken codec might raise)."""
    from netspec.data.transform import DataTransformer
    real = DataTransformer.datum_array

    def failing(self, d, key=None, *a, **kw):
        if key == b"00000004":
            raise RuntimeError("decoder crashed")
        return real(self, d, key, *a, **kw)
    monkeypatch.setattr(DataTransformer, "datum_array", failing)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_worker_error_names_the_record_and_the_layer_recovers(jpeg_db, tmp_path, monkeypatch, failing_record,
                                                              kind):
    _use(monkeypatch, "2", kind)
    net = _data_net(tmp_path, jpeg_db, phase=netspec.TEST)
    net.forward()  # records 0-2
    with pytest.raises(DataError) as err:
        net.forward()  # records 3-5
    msg = str(err.value)
    assert "layer 'd'" in msg and "record '00000004'" in msg and "decoder crashed" in msg
    chain, e = [], err.value
    while e is not None:
        chain.append(type(e))
        e = e.__cause__
    assert RuntimeError in chain  # the original exception stays attached (across the process boundary too)
    net.forward()  # the failed batch counts as read: records 6-8
    assert net.blobs["label"].data.tolist() == [6, 7, 8]


def test_dying_worker_process_names_the_record(jpeg_db, tmp_path, monkeypatch):
    from netspec.data.transform import DataTransformer
    parent, real = os.getpid(), DataTransformer.datum_array

    def crash(self, d, key=None, *a, **kw):
        if key == b"00000005" and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # what a segfaulting decoder or the OOM killer does
        return real(self, d, key, *a, **kw)
    monkeypatch.setattr(DataTransformer, "datum_array", crash)
    _use(monkeypatch, "2", "process")
    net = _data_net(tmp_path, jpeg_db, phase=netspec.TEST)
    net.forward()
    pids = _worker_pids(net)
    with pytest.raises(DataError, match=r"layer 'd'.*worker process \d+ died \(killed by SIGKILL\) while loading "
                                        r"batch 1: LMDB '.*db': record '00000005'"):
        net.forward()
    assert _segments(pids) == set()  # the dead worker's shared memory is removed (and the other's)
    net.forward()  # new workers, after the failed batch
    assert net.blobs["label"].data.tolist() == [6, 7, 8]


def _worker_pids(net):
    return [w.proc.pid for w in net.module.get_module(0)._loader._workers]


def _segments(pids):
    """The shared-memory segments of these worker processes of ours."""
    mine = tuple(f"netspec_{os.getpid()}_{p}_" for p in pids)
    return {n for n in os.listdir("/dev/shm") if n.startswith(mine)} if os.path.isdir("/dev/shm") else set()


def test_process_workers_leave_no_shared_memory(jpeg_db, tmp_path, monkeypatch):
    import gc
    _use(monkeypatch, "2", "process")
    net = _data_net(tmp_path, jpeg_db)
    _batches(net, 3)  # more batches are in flight when the net goes away
    pids = _worker_pids(net)
    assert _segments(pids)  # reused batch after batch while the workers live
    del net
    gc.collect()
    assert _segments(pids) == set()


class _Counting:
    """A minimal batch source: batch k holds [k*2, k*2+1]; builds record their thread or process."""

    def __init__(self):
        self.index = 0

    def plan(self):
        task = BatchTask(self.index, [2 * self.index, 2 * self.index + 1])
        self.index += 1
        return task

    def build(self, task, out):
        a = out.array((2,))
        a[:] = task.items
        return (a,)

    def item_name(self, task, i):
        return f"item {task.items[i]}"

    def get_state(self):
        return self.index

    def set_state(self, state):
        self.index = state


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_loader_order_and_rewind(kind):
    src = _Counting()
    loader = Loader(src, workers=3, depth=2, kind=kind)
    got = [loader.next()[0].tolist() for _ in range(5)]
    assert got == [[2.0 * k, 2.0 * k + 1] for k in range(5)]
    assert src.index > 5  # planned ahead
    loader.rewind()
    assert src.index == 5 and loader.consumed_state == 5


_OPENCV_AFTER_FORK = """
import cv2, numpy as np
from netspec.data.workers import BatchTask, Loader

class Blur:  # a source whose batches use OpenCV's parallel code, as the image transforms do
    def __init__(self):
        self.index = 0
    def plan(self):
        self.index += 1
        return BatchTask(self.index - 1, [self.index - 1])
    def build(self, task, out):
        img = np.full((1200, 1200), task.items[0], np.float32)
        a = out.array((2,))
        a[:] = (cv2.GaussianBlur(img, (9, 9), 0).mean(), cv2.getNumThreads())
        return (a,)
    def item_name(self, task, i):
        return str(task.items[i])
    def get_state(self):
        return self.index
    def set_state(self, s):
        self.index = s

big = np.random.rand(2000, 2000).astype(np.float32)
for _ in range(5):  # start OpenCV's thread pool in the parent, as a TEST net or an inline loader does
    cv2.GaussianBlur(big, (9, 9), 0)
    cv2.resize(big, (3000, 3000))
before = cv2.getNumThreads()
loader = Loader(Blur(), workers=2, depth=2, kind="process")
got = [loader.next()[0].tolist() for _ in range(4)]
loader.close()
assert [g[0] for g in got] == [0.0, 1.0, 2.0, 3.0], got
assert all(g[1] == 1 for g in got), got  # serial OpenCV in a worker process: one worker, one core
assert cv2.getNumThreads() == before  # the parent keeps its threads
print("ok")
"""


def test_process_workers_survive_a_forked_opencv_thread_pool(tmp_path):
    # OpenCV's pthreads pool forked mid-use left every worker hung in its first OpenCV call (CI hang, stop 14).
    # Its own interpreter, with a deadline: a hang is a failure here, not a stuck suite.
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", _OPENCV_AFTER_FORK], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the interpreter and its hung workers
        proc.communicate()
        pytest.fail("a process loader hung after OpenCV's thread pool had run in the parent")
    assert proc.returncode == 0 and out.strip() == "ok", err[-3000:]


def test_loader_settings_are_checked(monkeypatch):
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "two")
    with pytest.raises(DataError, match="NETSPEC_LOADER_WORKERS"):
        loader_workers()
    monkeypatch.setenv("NETSPEC_LOADER_WORKERS", "3")
    assert loader_workers() == 3
    monkeypatch.setenv("NETSPEC_DATA_PREFETCH", "0")
    assert loader_workers() == 0
    monkeypatch.setenv("NETSPEC_LOADER_KIND", "greenlet")
    with pytest.raises(DataError, match="thread, process"):
        loader_kind()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_come_from_pinned_memory(jpeg_db, tmp_path, monkeypatch):
    import torch
    _use(monkeypatch, "0", "thread")
    ref = _batches(_data_net(tmp_path, jpeg_db), 3)
    for kind in ("thread", "process"):
        _use(monkeypatch, "2", kind)
        net = _data_net(tmp_path, jpeg_db)
        mod = net.module.get_module(0).to("cuda")
        got = []
        for _ in range(3):
            data, label = mod()
            assert data.device.type == "cuda"
            got.append((data.cpu().numpy(), label.cpu().numpy()))
        assert mod._loader.pin
        batch = mod._loader.next()
        assert all(t.is_pinned() for t in batch)
        _same(ref, got)
        torch.cuda.synchronize()
