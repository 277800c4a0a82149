"""DataTransformer against a line-by-line port of Caffe's DataTransformer::Transform(const Datum&, Dtype*)."""
import numpy as np
import pytest

from netspec.data.transform import DataTransformer
from netspec.errors import DataError
from netspec.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def caffe_transform(x, scale=1.0, mean=None, mean_values=(), crop=0, h_off=0, w_off=0, do_mirror=False):
    """Caffe's loop, element by element in float32 (data_transformer.cpp)."""
    c_, H, W = x.shape
    h = w = crop if crop else None
    height, width = (h, w) if crop else (H, W)
    mv = list(mean_values)
    if len(mv) == 1 and c_ > 1:
        mv = mv * c_
    out = np.empty((c_, height, width), np.float32)
    flat = x.reshape(-1)
    mflat = mean.reshape(-1) if mean is not None else None
    s = np.float32(scale)
    for c in range(c_):
        for hh in range(height):
            for ww in range(width):
                di = (c * H + h_off + hh) * W + w_off + ww
                ti = (c * height + hh) * width + (width - 1 - ww if do_mirror else ww)
                e = np.float32(flat[di])
                if mflat is not None:
                    v = (e - np.float32(mflat[di])) * s
                elif mv:
                    v = (e - np.float32(mv[c])) * s
                else:
                    v = e * s
                out.reshape(-1)[ti] = v
    return out


def tp(**kw):
    p = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.fixture
def img():
    return np.random.default_rng(0).integers(0, 256, (3, 7, 9), dtype=np.uint8)


@pytest.mark.parametrize("kw", [
    {}, {"scale": 0.00390625}, {"scale": 0.017}, {"mean_value": [104, 117, 123]},
    {"mean_value": [128]}, {"mean_value": [104.5, 117.25, 123.1], "scale": 0.0078125},
])
def test_scale_and_mean_value_exact(img, kw):
    t = DataTransformer(tp(**kw), TEST)
    ref = caffe_transform(img, scale=kw.get("scale", 1.0), mean_values=kw.get("mean_value", ()))
    out = t(img)
    assert out.dtype == np.float32 and np.array_equal(out, ref)


def test_mean_before_scale(tmp_path, img):
    mean = np.random.default_rng(1).uniform(0, 255, (1, 3, 7, 9)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    b = caffe_pb2.BlobProto(num=1, channels=3, height=7, width=9)
    b.data.extend(mean.ravel().tolist())
    path.write_bytes(b.SerializeToString())
    t = DataTransformer(tp(mean_file=str(path), scale=0.017), TEST)
    out = t(img)
    assert np.array_equal(out, caffe_transform(img, 0.017, mean=mean[0]))
    # subtracting after scaling would be different
    assert not np.allclose(out, img.astype(np.float32) * np.float32(0.017) - mean[0])
    # centre crop uses the matching window of the (uncropped) mean
    t = DataTransformer(tp(mean_file=str(path), crop_size=5, scale=0.5), TEST)
    assert np.array_equal(t(img), caffe_transform(img, 0.5, mean=mean[0], crop=5, h_off=1, w_off=2))
    # a mean of another size is a clear error
    with pytest.raises(DataError, match="mean_file is 3x7x9"):
        t(np.zeros((3, 8, 9), np.uint8), key=b"00000003")


def test_test_phase_centre_crop(img):
    t = DataTransformer(tp(crop_size=4, mean_value=[10]), TEST)
    assert t.infer_shape(img.shape) == (3, 4, 4)
    # (H - crop) / 2 = 1, (W - crop) / 2 = 2 (integer division)
    assert np.array_equal(t(img), caffe_transform(img, mean_values=[10], crop=4, h_off=1, w_off=2))


def test_train_phase_random_crop_and_mirror(img):
    seen_off, seen_mirror = set(), set()
    t = DataTransformer(tp(crop_size=5, mirror=True), TRAIN, seed=123)
    for _ in range(60):
        out = t(img)
        hits = [(h, w, m) for h in range(3) for w in range(5) for m in (False, True)
                if np.array_equal(out, caffe_transform(img, crop=5, h_off=h, w_off=w, do_mirror=m))]
        assert hits, "output is not a crop/mirror of the input"
        seen_off.add(hits[0][:2])
        seen_mirror.add(hits[0][2])
    assert len(seen_off) > 5 and seen_mirror == {False, True}
    # same seed, same stream
    a = DataTransformer(tp(crop_size=5, mirror=True), TRAIN, seed=7)
    b = DataTransformer(tp(crop_size=5, mirror=True), TRAIN, seed=7)
    assert all(np.array_equal(a(img), b(img)) for _ in range(10))


def test_mirror_is_random_in_test_phase_too(img):
    """Caffe: do_mirror = param_.mirror() && Rand(2), whatever the phase."""
    t = DataTransformer(tp(mirror=True), TEST, seed=3)
    outs = {t(img).tobytes() for _ in range(30)}
    assert outs == {img.astype(np.float32).tobytes(), img[:, :, ::-1].astype(np.float32).tobytes()}


def test_no_randomness_no_rng(img):
    import torch
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    DataTransformer(tp(crop_size=3), TEST)       # TEST crop and no mirror: draws nothing (Caffe's InitRand)
    assert torch.equal(torch.rand(1), a)


def test_float_data_input():
    x = np.random.default_rng(2).standard_normal((2, 4, 4)).astype(np.float32)
    t = DataTransformer(tp(scale=2.0, mean_value=[0.5, -1]), TEST)
    assert np.array_equal(t(x), caffe_transform(x, 2.0, mean_values=[0.5, -1]))


def test_errors(img, tmp_path):
    with pytest.raises(DataError, match="mean_file and mean_value"):
        DataTransformer(tp(mean_file="m.binaryproto", mean_value=[1]), TEST)
    with pytest.raises(DataError, match="either 1 mean_value or as many as channels: 3"):
        DataTransformer(tp(mean_value=[1, 2]), TEST)(img)
    with pytest.raises(DataError, match="record 'k'.*smaller than crop_size 8"):
        DataTransformer(tp(crop_size=8), TEST)(img, key="k")
    with pytest.raises(DataError, match="mean_file 'nope.binaryproto' not found"):
        DataTransformer(tp(mean_file="nope.binaryproto"), TEST)
    with pytest.raises(DataError, match="force_color and force_gray"):
        DataTransformer(tp(force_color=True, force_gray=True), TEST)
