"""Coordinate maps and computed Crop offsets (Caffe's coord_map rules)."""
from fractions import Fraction

import pytest

from netspec.formats import prototxt
from netspec.authoring import zoo
from netspec.authoring.coord_map import CoordMap, CoordMapError, check_crops, coord_map, coord_map_from_to, crop, crop_offsets
from netspec.authoring.dsl import NetSpec, layers as L, params as P

F = Fraction


def _data():
    return L.Input(shape=dict(dim=[1, 3, 64, 64]))


@pytest.mark.parametrize("make, scale, shift", [
    (lambda x: L.Convolution(x, num_output=1, kernel_size=3, pad=1), 1, 0),
    (lambda x: L.Convolution(x, num_output=1, kernel_size=3, pad=100), 1, 99),
    (lambda x: L.Convolution(x, num_output=1, kernel_size=7), 1, -3),
    (lambda x: L.Convolution(x, num_output=1, kernel_size=3, dilation=3), 1, -3),  # extent 7
    (lambda x: L.Convolution(x, num_output=1, kernel_size=4, stride=2, pad=1), F(1, 2), F(-1, 4)),
    (lambda x: L.Pooling(x, pool=P.Pooling.MAX, kernel_size=2, stride=2), F(1, 2), F(-1, 4)),
    (lambda x: L.Deconvolution(x, num_output=1, kernel_size=4, stride=2), 2, F(3, 2)),
    (lambda x: L.Deconvolution(x, num_output=1, kernel_size=64, stride=32), 32, F(63, 2)),
    (lambda x: L.ReLU(x), 1, 0),
    (lambda x: L.Scale(x), 1, 0),
])
def test_layer_maps(make, scale, shift):
    top = make(_data())
    m = coord_map(top.fn)
    assert m.scale == (F(scale),) and m.shift == (F(shift),)


def test_composition_and_inverse():
    pool = CoordMap(1, (F(1, 2),), (F(-1, 4),))
    two = pool.after(pool)  # x -> x/4 - 3/8
    assert two.scale == (F(1, 4),) and two.shift == (F(-3, 8),)
    ident = two.after(two.inverse())
    assert ident.scale == (F(1),) and ident.shift == (F(0),)
    with pytest.raises(CoordMapError, match="different axes"):
        CoordMap(1, (F(1),), (F(0),)).after(CoordMap(2, (F(1),), (F(0),)))


def _fcn8s_head():
    """FCN-8s skip geometry on a short VGG-like trunk (conv pad 100, 5 pools)."""
    n = NetSpec()
    n.data = _data()
    x = L.Convolution(n.data, num_output=1, kernel_size=3, pad=100)
    pools = []
    for _ in range(5):
        x = L.Convolution(x, num_output=1, kernel_size=3, pad=1)
        x = L.Pooling(x, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        pools.append(x)
    fc = L.Convolution(pools[4], num_output=1, kernel_size=7)
    up2 = L.Deconvolution(fc, num_output=1, kernel_size=4, stride=2)
    return n, pools, up2


def test_fcn8s_offsets_5_9_31():
    n, pools, up2 = _fcn8s_head()
    assert crop_offsets(pools[3], up2) == (2, [5])
    c4 = crop(pools[3], up2)
    fuse4 = L.Eltwise(up2, c4)
    up4 = L.Deconvolution(fuse4, num_output=1, kernel_size=4, stride=2)
    assert crop_offsets(pools[2], up4) == (2, [9])
    c3 = crop(pools[2], up4)
    up8 = L.Deconvolution(L.Eltwise(up4, c3), num_output=1, kernel_size=16, stride=8)
    assert crop_offsets(up8, n.data) == (2, [31])
    lp = crop(up8, n.data, name="score").fn.param_proto
    assert lp.name == "score" and lp.crop_param.axis == 2 and list(lp.crop_param.offset) == [31]


def test_zoo_nets_compute_upstream_offsets():
    def offsets(name):
        return [list(l.crop_param.offset) for l in zoo.net(name, "deploy").layer if l.type == "Crop"]
    assert offsets("fcn32s_voc") == [[19]]
    assert offsets("fcn16s_voc") == [[5], [27]]
    assert offsets("fcn8s_voc") == [[5], [9], [31]]
    assert offsets("fcn8s_atonce_voc") == [[5], [9], [31]]
    assert offsets("fcn2s_vgg16_voc") == [[5], [9], [17], [33], [34]]
    assert offsets("fcn2s_vgg19_voc") == [[5], [9], [17], [33], [34]]


def _upstream_nets(shared_dir):
    root = shared_dir / "upstream_prototxt"
    return sorted(p for p in root.rglob("*.prototxt")
                  if "solver" not in p.name and "_reference_vgg" not in str(p))


def test_offsets_in_every_upstream_prototxt_are_the_computed_ones(shared_dir):
    """Every Crop of the FCN and Dilated FCN-2s fixtures (hand-written ones included) has the
    offset coord_map computes: 19; 5/27; 5/9/31; AlexNet 18; Dilated 5/9/17/33/34."""
    seen = set()
    for path in _upstream_nets(shared_dir):
        checks = check_crops(prototxt.parse_net(path))
        assert checks, path
        for c in checks:
            assert c.ok, f"{path}: layer {c.name}: given {c.given}, computed {c.computed} {c.error}"
            seen.add(c.given[1][0])
    assert {5, 9, 17, 18, 19, 27, 31, 33, 34} <= seen


def test_check_crops_flags_a_wrong_offset(shared_dir):
    net = prototxt.parse_net(shared_dir / "upstream_prototxt/fcn.berkeleyvision.org/voc-fcn8s/"
                             "deploy.prototxt")
    net.layer[-1].crop_param.offset[0] = 34  # the centred guess of fcn PR #5
    bad = [c for c in check_crops(net) if not c.ok]
    assert [(c.name, c.given[1], c.computed[1]) for c in bad] == [("score", [34], [31])]


def test_per_axis_offsets():
    x = _data()
    conv = L.Convolution(x, num_output=1, kernel_h=3, kernel_w=3, pad_h=4, pad_w=2)
    assert crop_offsets(conv, x) == (2, [3, 1])
    assert list(crop(conv, x).fn.param_proto.crop_param.offset) == [3, 1]


def test_crop_errors_explain():
    x = _data()
    pool = L.Pooling(x, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    with pytest.raises(CoordMapError, match="different scales"):
        crop(pool, x)
    small = L.Convolution(x, num_output=1, kernel_size=5)  # shrinks: starts 2 px inside
    with pytest.raises(CoordMapError, match="negative"):
        crop(small, x)
    odd = L.Deconvolution(pool, num_output=1, kernel_size=3, stride=2)  # shift 1/2 off
    with pytest.raises(CoordMapError, match="not an integer"):
        crop(odd, x)
    other = L.Input(shape=dict(dim=[1, 3, 64, 64]))
    with pytest.raises(CoordMapError, match="no common ancestor"):
        coord_map_from_to(x, other)
    flat = L.InnerProduct(x, num_output=3)
    with pytest.raises(CoordMapError, match="no coordinate map"):
        coord_map(flat.fn)
