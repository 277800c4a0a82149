"""SegDataLayer (netspec.layers.seg_lmdb): image and label go through one transform (crop, mirror, scale jitter,
rotation); the name prototxts use, netspec.data.seg.SegDataLayer, stays built in."""
import numpy as np
import pytest

import netspec
from netspec.data.synthetic import pack
from netspec.net.pycaffe import Net

PROTO = """
layer {{ name: "data" type: "Python" top: "data" top: "label"
  python_param {{ module: "netspec.layers.seg_lmdb" layer: "SegDataLayer" param_str: "{ps}" }} }}
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
    from netspec.layers.seg_lmdb import check_param_str
    from netspec.errors import DataError
    with pytest.raises(DataError, match=words):
        check_param_str(param)


# -- its home: netspec.layers.seg_lmdb, built in under the name prototxts use ----------------------------------

def test_the_old_module_name_is_built_in_and_the_old_import_still_works(tmp_path):
    import subprocess
    import sys

    from netspec.data import seg as shim
    from netspec.layers import python as pylayer
    from netspec.layers import seg_lmdb
    for name in ("netspec.data.seg.SegDataLayer", "netspec.layers.seg_lmdb.SegDataLayer"):
        assert pylayer.BUILTIN[name] is seg_lmdb.SegDataLayer
    assert shim.SegDataLayer is seg_lmdb.SegDataLayer and shim.check_param_str is seg_lmdb.check_param_str
    new = _net(tmp_path, netspec.TRAIN, crop=16, seed=2)
    (tmp_path / "old.prototxt").write_text((tmp_path / "n.prototxt").read_text().replace(
        "netspec.layers.seg_lmdb", "netspec.data.seg"))
    old = Net(str(tmp_path / "old.prototxt"), netspec.TRAIN)
    for _ in range(3):
        new.forward()
        old.forward()
        assert np.array_equal(new.blobs["data"].data, old.blobs["data"].data)
    # plain data stays plain: importing netspec.data does not import the layer's old name
    code = "import sys, netspec.data; print('netspec.data.seg' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr[-2000:]


def test_the_layer_does_not_pack_the_demo_set(tmp_path, monkeypatch):
    from netspec.errors import DataError
    monkeypatch.chdir(tmp_path)
    (tmp_path / "n.prototxt").write_text(PROTO.format(ps=repr({"source": "data/demo/train"}).replace('"', "'")))
    with pytest.raises(DataError, match="python -m netspec.data.synthetic data/demo"):
        Net(str(tmp_path / "n.prototxt"), netspec.TRAIN)
    assert not (tmp_path / "data").exists()  # tools/train.py packs it (netspec.authoring.zoo.demo.pack_missing_data)


def test_a_state_saved_at_an_epoch_end_by_the_layer_before_its_move_resumes(tmp_path):
    # the layer's own stream kept (pos = n, the finished epoch's order) until the next item was asked for; the
    # shared stream (layers.data._ListStream) draws the next epoch's order at once (pos = 0, the new order)
    from netspec.layers.seg_lmdb import _SegSource
    pack(str(tmp_path / "ds"), n_train=6, n_val=1, size=16)
    src = _SegSource(str(tmp_path / "ds" / "train"), 3, True, False, np.zeros((3, 1, 1), np.float32), 1.0, 0,
                     255, None, 0.0, 5, True)
    pos, order, rng_state, _, _ = src.get_state()  # the first epoch's order, drawn
    src.plan()
    src.plan()  # 6 records: the epoch ends here
    assert src.get_state()[0] == 0
    ref = [src.plan().items for _ in range(3)]
    src.set_state((6, order, rng_state, 2, 6))  # what the layer's own stream saved at that point
    assert [src.plan().items for _ in range(3)] == ref


def test_building_it_leaves_torchs_generator_alone(tmp_path):
    # its order and augmentation come from its own 'seed' (the shared stream would draw one from torch's RNG,
    # which would move every filler draw after the data layer)
    import torch
    torch.manual_seed(0)
    ref = torch.rand(3)
    torch.manual_seed(0)
    _net(tmp_path, netspec.TRAIN, shuffle=True, crop=16).forward()
    assert torch.equal(torch.rand(3), ref)
