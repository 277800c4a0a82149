"""MatWrite (DeepLab): file names from prefix/source/strip/period, the W x H x C x N layout of 'data', the
no-scipy fallback."""
import logging

import numpy as np
import pytest
import torch

import netspec
from netspec.errors import LayerError
from netspec.layers import mat_write
from netspec.layers.mat_write import blob_to_mat_array


def net_text(prefix, extra="", shape=(2, 3, 4, 5)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return (f'layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}\n'
            f'layer {{ name: "w" type: "MatWrite" bottom: "x" bottom: "x" mat_write_param {{ prefix: "{prefix}" '
            f'{extra} }} }}\n')


def run(tmp_path, text, n=1, shape=(2, 3, 4, 5)):
    p = tmp_path / "net.prototxt"
    p.write_text(text)
    net = netspec.Net(str(p), netspec.TEST)
    xs = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i in range(n)]
    for x in xs:
        net.forward(x=x)
    return xs


def test_layout_matches_matio_column_major():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    m = blob_to_mat_array(a)
    assert m.shape == (5, 4, 3, 2)
    # matio writes the blob's memory with dims (W, H, C, N): column-major element (w, h, c, n) is [n, c, h, w]
    assert np.array_equal(m.ravel(order="F"), a.ravel())
    assert blob_to_mat_array(np.zeros((2, 7), np.float32)).shape == (1, 1, 7, 2)


def test_writes_data_per_forward_and_bottom(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    xs = run(tmp_path, net_text(f"{tmp_path}/out_"), n=2)
    for k, x in enumerate(xs):
        for i in range(2):
            d = scipy_io.loadmat(str(tmp_path / f"out_iter_{k}_blob_{i}.mat"))["data"]
            assert d.dtype == np.float32 and d.shape == (5, 4, 3, 2)
            np.testing.assert_array_equal(d[4, 3, 2, 1], x[1, 2, 3, 4])
            np.testing.assert_array_equal(d.transpose(3, 2, 1, 0), x)


def test_source_names_strip_and_period(tmp_path):
    pytest.importorskip("scipy.io")
    (tmp_path / "ids.txt").write_text("a_img.jpg 1\nb_img.jpg\nc_img.jpg\n")
    run(tmp_path, net_text(f"{tmp_path}/", f'source: "{tmp_path}/ids.txt" strip: 4 period: 2'), n=3)
    assert sorted(p.name for p in tmp_path.glob("*.mat")) == ["a_img_blob_0.mat", "a_img_blob_1.mat",
                                                              "c_img_blob_0.mat", "c_img_blob_1.mat"]


def test_more_forwards_than_names_is_an_error(tmp_path):
    pytest.importorskip("scipy.io")
    (tmp_path / "ids.txt").write_text("a\n")
    with pytest.raises(LayerError, match="more iterations"):
        run(tmp_path, net_text(f"{tmp_path}/", f'source: "{tmp_path}/ids.txt"'), n=2)


@pytest.mark.parametrize("extra,msg", [
    ("period: 0", "period must be positive"),
    ('source: "/nonexistent/ids.txt"', "failed to open source"),
])
def test_bad_parameters(tmp_path, extra, msg):
    with pytest.raises(LayerError, match=msg):
        run(tmp_path, net_text(f"{tmp_path}/", extra))


def test_prefix_is_required(tmp_path):
    text = net_text("x").replace('prefix: "x"', "")
    with pytest.raises(LayerError, match="prefix is required"):
        run(tmp_path, text)


def test_missing_directory_is_an_error(tmp_path):
    pytest.importorskip("scipy.io")
    with pytest.raises(LayerError, match="does not exist"):
        run(tmp_path, net_text(f"{tmp_path}/no/such/dir/"))


def test_without_scipy_writes_nothing_and_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mat_write, "_savemat", lambda: None)
    monkeypatch.setattr(mat_write, "_warned_no_scipy", [])
    with caplog.at_level(logging.WARNING, logger="netspec"):
        run(tmp_path, net_text(f"{tmp_path}/out_"), n=2)
        run(tmp_path, net_text(f"{tmp_path}/out_"), n=1)
    assert not list(tmp_path.glob("*.mat"))
    assert sum("scipy is not installed" in r.getMessage() for r in caplog.records) == 1


def test_consumes_its_bottoms_and_has_no_tops(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text(net_text(f"{tmp_path}/o_"))
    net = netspec.Net(str(p), netspec.TEST)
    assert net.outputs == []  # as Caffe: a consumed blob is no net output
    assert net.top_names["w"] == []
