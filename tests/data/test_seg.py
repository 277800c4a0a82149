"""SegDataLayer: image and label go through one transform (crop, mirror, scale jitter, rotation)."""
import os

import numpy as np
import pytest

import netspec
from netspec.data.lmdb_io import LMDBReader
from netspec.data.synthetic import pack
from netspec.net.pycaffe import Net

PROTO = """
layer {{ name: "data" type: "Python" top: "data" top: "label"
  python_param {{ module: "netspec.data.seg" layer: "SegDataLayer" param_str: "{ps}" }} }}
"""


def _net(tmp_path, phase, **params):
    root = tmp_path / "ds"
    if not root.exists():
        pack(str(root), n_train=6, n_val=2, size=32)
    ps = dict(source=str(root / "train"), batch_size=1, mean=(0, 0, 0), **params)
    (tmp_path / "n.prototxt").write_text(PROTO.format(ps=repr(ps).replace('"', "'")))
    return Net(str(tmp_path / "n.prototxt"), phase)


def test_label_follows_the_image_through_jitter_and_rotation(tmp_path):
    net = _net(tmp_path, netspec.TRAIN, scale_jitter=(0.5, 1.5), rotate=20, seed=3, crop=24)
    sizes = set()
    for _ in range(6):
        net.forward()
        img, lab = net.blobs["data"].data[0], net.blobs["label"].data[0, 0]
        assert img.shape[1:] == lab.shape == (24, 24)
        vals = set(np.unique(lab).tolist())
        assert vals <= {0, 1, 2, 3, 255}
        # where the label says background, the image is grey-ish (background colour ~90 +- texture/noise)
        bg = lab == 0
        if bg.sum() > 20:
            assert abs(float(img[:, bg].mean()) - 90) < 40
    net2 = _net(tmp_path, netspec.TRAIN, scale_jitter=(0.5, 1.5), seed=4)
    for _ in range(4):
        net2.forward()
        sizes.add(net2.blobs["data"].shape[2:])
    assert len(sizes) > 1        # the jitter changes the size per image (batch 1 keeps its own size)


def test_test_phase_is_deterministic_and_unaugmented(tmp_path):
    a = _net(tmp_path, netspec.TEST, scale_jitter=(0.5, 1.5), rotate=30)
    a.forward()
    assert a.blobs["data"].shape == (1, 3, 32, 32)
    assert set(np.unique(a.blobs["label"].data).tolist()) <= {0, 1, 2, 3}


def test_concurrent_packs_of_the_demo_data_agree(tmp_path):
    # the ranks of a torchrun all find data/demo missing and pack it at once: one packs, the others wait
    # (the collision it prevents is a matter of milliseconds; this checks the outcome, not the timing)
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import sys; sys.path.insert(0, {repo!r}); from netspec.data.synthetic import pack; "
            f"pack({str(tmp_path / 'demo')!r}, n_train=60, n_val=4, size=32)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    pack(str(tmp_path / "ref"), n_train=60, n_val=4, size=32)
    for split in ("train", "val"):
        for what in ("images", "labels"):
            a, b = LMDBReader(str(tmp_path / "demo" / split / what)), LMDBReader(str(tmp_path / "ref" / split / what))
            assert len(a) == len(b) == (60 if split == "train" else 4)
            assert all(a[i] == b[i] for i in range(len(a)))


@pytest.mark.parametrize("param, words", [
    ({"sorce": "d"}, "at least 'source'"),
    ({"source": "d", "sorce": "d"}, "unknown param_str key 'sorce' \\(did you mean 'source'\\?\\); known keys: source"),
    ({"source": "d", "crop": 100000}, "'crop' must be an integer >= 0 and <= 8192, got 100000"),
    ({"source": "d", "crop": -5}, "'crop' must be an integer >= 0"),
    ({"source": "d", "scale_jitter": (5000, 5000)}, "'scale_jitter' must be \\(lo, hi\\) with 0 < lo <= hi <= 8"),
    ({"source": "d", "batch_size": 0}, "'batch_size' must be an integer >= 1"),
    ({"source": "d", "mean": (1, 2)}, "'mean' must be 3 numbers"),
    ({"source": "d", "seed": "abc"}, "'seed' must be an integer >= 0, got 'abc'"),
])
def test_param_str_is_checked_like_a_schema_before_anything_is_read(param, words):
    from netspec.data.seg import check_param_str
    from netspec.errors import DataError
    with pytest.raises(DataError, match=words):
        check_param_str(param)
