"""Data parallelism (netspec.data.shard): each process of a multi-process run reads its own part of the TRAIN
stream, by Caffe's DataLayer::Skip rule (record k of the stream goes to rank k mod world), with its own
augmentation; TEST nets and single processes read everything."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import netspec
from netspec.data.shard import Shard
from netspec.data.synthetic import pack
from netspec.net.pycaffe import Net

from test_workers import write_labelled_db

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_take_deals_the_stream_round_robin():
    stream = iter(range(100))
    got, off = Shard(1, 3).take(lambda: next(stream), 0, 4)
    assert got == [1, 4, 7, 10] and off == 11  # offsets 1, 4, 7, 10 of the stream: offset % 3 == 1
    got, off = Shard(1, 3).take(lambda: next(stream), off, 2)
    assert got == [13, 16] and off == 17
    stream = iter(range(10))
    assert Shard().take(lambda: next(stream), 0, 3) == ([0, 1, 2], 3)
    assert Shard().rng_key(5, 2) == [5, 2] and Shard(0, 4).rng_key(5, 2) == [5, 2]
    assert Shard(3, 4).rng_key(5, 2) == [5, 2, 3]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return write_labelled_db(tmp_path_factory.mktemp("shard") / "db", 7, 12, 12)


def _as_rank(monkeypatch, rank, world):
    monkeypatch.setattr(Shard, "current", classmethod(lambda cls, train: cls(rank, world) if train else cls()))


def _data_labels(tmp_path, db, phase, n):
    p = tmp_path / "data.prototxt"
    p.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                 f'transform_param {{ crop_size: 8 mirror: true }} '
                 f'data_param {{ source: "{db}" batch_size: 3 }} }}')
    netspec.set_random_seed(5)
    net = Net(str(p), phase)
    out = []
    for _ in range(n):
        net.forward()
        out.append((net.blobs["label"].data.astype(int).tolist(), net.blobs["data"].data.copy()))
    return out


def test_data_layer_ranks_read_records_offset_mod_world(db, tmp_path, monkeypatch):
    ranks = []
    for r in range(2):
        _as_rank(monkeypatch, r, 2)
        ranks.append(_data_labels(tmp_path, db, netspec.TRAIN, 3))
    # Caffe: record offset k (key order, wrapping around the 7 records) is rank k % 2's
    stream = [k % 7 for k in range(20)]
    assert [b[0] for b in ranks[0]] == [stream[0:6:2], stream[6:12:2], stream[12:18:2]]
    assert [b[0] for b in ranks[1]] == [stream[1:6:2], stream[7:12:2], stream[13:18:2]]
    # TEST nets are not sharded (only the root process scores)
    _as_rank(monkeypatch, 1, 2)
    assert [b[0] for b in _data_labels(tmp_path, db, netspec.TEST, 2)] == [[0, 1, 2], [3, 4, 5]]


def test_rank_zero_draws_as_one_process_and_other_ranks_differ(db, tmp_path, monkeypatch):
    _as_rank(monkeypatch, 0, 1)
    one = _data_labels(tmp_path, db, netspec.TRAIN, 1)[0]
    _as_rank(monkeypatch, 0, 4)
    r0 = _data_labels(tmp_path, db, netspec.TRAIN, 1)[0]
    assert one[0] == [0, 1, 2] and r0[0] == [0, 4, 1]  # offsets 0, 4, 8 -> records 0, 4, 1
    assert np.array_equal(r0[1][0], one[1][0])  # record 0, first item of batch 0: the same crop and flip
    from netspec.data.transform import DataTransformer
    from netspec.proto import caffe_pb2
    tp = caffe_pb2.TransformationParameter(crop_size=8, mirror=True)
    t = DataTransformer(tp, caffe_pb2.TRAIN, seed=11)
    draws = {r: t.batch_rng(3, Shard(r, 3)).integers(0, 1 << 30, 8).tolist() for r in range(3)}
    assert draws[0] == np.random.default_rng([11, 3]).integers(0, 1 << 30, 8).tolist()
    assert draws[1] != draws[0] and draws[2] != draws[1]


def _seg_items(tmp_path, root, n):
    ps = dict(source=str(root / "train"), batch_size=2, mean=(0, 0, 0), seed=7, workers=0, mirror=False)
    (tmp_path / "seg.prototxt").write_text(
        'layer { name: "data" type: "Python" top: "data" top: "label" python_param { module: "netspec.data.seg" '
        f'layer: "SegDataLayer" param_str: "{repr(ps)}" }} }}')
    net = Net(str(tmp_path / "seg.prototxt"), netspec.TRAIN)
    out = []
    for _ in range(n):
        net.forward()
        out.append(net.blobs["data"].data.copy())
    return out


def test_seg_layer_ranks_split_the_shuffled_stream(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    pack(str(root), n_train=6, n_val=1, size=16)
    _as_rank(monkeypatch, 0, 1)
    whole = _seg_items(tmp_path, root, 6)   # 12 images: 2 epochs of the seeded shuffle
    whole = [img for batch in whole for img in batch]
    parts = []
    for r in range(3):
        _as_rank(monkeypatch, r, 3)
        got = _seg_items(tmp_path, root, 2)
        parts.append([img for batch in got for img in batch])
    for r in range(3):  # no augmentation in this net: rank r's images are items r, r+3, ... of the stream
        for j, img in enumerate(parts[r]):
            assert np.array_equal(img, whole[r + 3 * j])


WORKER = textwrap.dedent('''
    import sys, json
    sys.path.insert(0, {repo!r})
    import torch.distributed as dist
    import netspec
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    net = netspec.Net("data.prototxt", netspec.TRAIN)
    labels = []
    for _ in range(2):
        net.forward()
        labels += net.blobs["label"].data.astype(int).tolist()
    print(json.dumps(labels))
    dist.destroy_process_group()
''')


def test_two_processes_read_disjoint_records(db, tmp_path):
    (tmp_path / "data.prototxt").write_text(
        f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{db}" batch_size: 3 }} }}')
    (tmp_path / "w.py").write_text(WORKER.format(repo=REPO))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "w.py", str(r)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert outs[0] == [0, 2, 4, 6, 1, 3] and outs[1] == [1, 3, 5, 0, 2, 4]
