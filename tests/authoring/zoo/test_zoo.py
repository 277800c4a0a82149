"""The model zoo: generated files are current, nets equal upstream's, deploy nets build with the
published shapes (shape inference only: no forward pass of a VGG net here)."""
import re
from pathlib import Path

import pytest

import netspec
from netspec.formats import prototxt
from netspec.authoring import zoo
from netspec.authoring.coord_map import check_crops

ROOT = Path(__file__).resolve().parents[3]
UP_FCN = "upstream_prototxt/fcn.berkeleyvision.org/"
UP_DIL = "upstream_prototxt/DilatedFCNSegmentation/"

# (zoo model, split) -> upstream file with the same net (the data layer's param_str aside)
UPSTREAM = {
    ("fcn32s_voc", "train"): UP_FCN + "voc-fcn32s/train.prototxt",
    ("fcn32s_voc", "val"): UP_FCN + "voc-fcn32s/val.prototxt",
    ("fcn16s_voc", "train"): UP_FCN + "voc-fcn16s/train.prototxt",
    ("fcn16s_voc", "val"): UP_FCN + "voc-fcn16s/val.prototxt",
    ("fcn8s_voc", "train"): UP_FCN + "voc-fcn8s/train.prototxt",
    ("fcn8s_voc", "val"): UP_FCN + "voc-fcn8s/val.prototxt",
    ("fcn8s_voc", "deploy"): UP_FCN + "voc-fcn8s/deploy.prototxt",
    ("fcn8s_atonce_voc", "train"): UP_FCN + "voc-fcn8s-atonce/train.prototxt",
    ("fcn8s_atonce_voc", "val"): UP_FCN + "voc-fcn8s-atonce/val.prototxt",
    ("fcn32s_pascalcontext", "train"): UP_FCN + "pascalcontext-fcn32s/train.prototxt",
    ("fcn16s_pascalcontext", "train"): UP_FCN + "pascalcontext-fcn16s/train.prototxt",
    ("fcn8s_pascalcontext", "val"): UP_FCN + "pascalcontext-fcn8s/val.prototxt",
    ("fcn32s_nyud_color", "train"): UP_FCN + "nyud-fcn32s-color/trainval.prototxt",
    ("fcn32s_nyud_hha", "val"): UP_FCN + "nyud-fcn32s-hha/test.prototxt",
    ("fcn32s_nyud_color_d", "train"): UP_FCN + "nyud-fcn32s-color-d/trainval.prototxt",
    ("fcn32s_nyud_color_d", "val"): UP_FCN + "nyud-fcn32s-color-d/test.prototxt",
    ("fcn32s_nyud_color_hha", "train"): UP_FCN + "nyud-fcn32s-color-hha/trainval.prototxt",
    ("fcn32s_nyud_color_hha", "val"): UP_FCN + "nyud-fcn32s-color-hha/test.prototxt",
    ("fcn32s_siftflow", "train"): UP_FCN + "siftflow-fcn32s/trainval.prototxt",
    ("fcn16s_siftflow", "val"): UP_FCN + "siftflow-fcn16s/test.prototxt",
    ("fcn8s_siftflow", "train"): UP_FCN + "siftflow-fcn8s/trainval.prototxt",
    ("fcn2s_vgg16_voc", "train"): UP_DIL + "Dilated_FCN-2s_VGG16/train.prototxt",
    ("fcn2s_vgg16_voc", "val"): UP_DIL + "Dilated_FCN-2s_VGG16/val.prototxt",
    ("fcn2s_vgg16_voc", "deploy"): UP_DIL + "Dilated_FCN-2s_VGG16/deploy.prototxt",
    ("fcn2s_vgg19_voc", "train"): UP_DIL + "_history/dbe78b0_vgg19/train.prototxt",
    ("fcn2s_vgg19_voc", "val"): UP_DIL + "_history/dbe78b0_vgg19/val.prototxt",
    ("fcn2s_vgg19_voc", "deploy"): UP_DIL + "Dilated_FCN-2s_VGG19/deploy.prototxt",
}


def test_committed_files_are_what_the_code_generates(tmp_path):
    written = zoo.write(str(tmp_path))
    assert len(written) == 4 * len(zoo.names())
    stale = []
    for path in written:
        rel = Path(path).relative_to(tmp_path)
        committed = ROOT / rel
        if not committed.is_file() or committed.read_bytes() != Path(path).read_bytes():
            stale.append(str(rel))
    assert not stale, f"regenerate with `python tools/make_zoo.py`: {stale}"


def test_make_zoo_check_mode(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_zoo", ROOT / "tools" / "make_zoo.py")
    make_zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_zoo)
    assert make_zoo.main(["--check", "--out", str(tmp_path), "demo"]) == 1
    assert make_zoo.main(["--out", str(tmp_path), "demo"]) == 0
    assert make_zoo.main(["--check", "--out", str(tmp_path), "demo"]) == 0
    assert sorted(p.name for p in (tmp_path / "prototxt" / "demo").iterdir()) == [
        "deploy.prototxt", "train.prototxt", "val.prototxt"]


@pytest.mark.parametrize("name", zoo.names())
def test_nets_parse_and_their_crops_are_consistent(name):
    nets = {s: prototxt.parse_net((ROOT / f"prototxt/{name}/{s}.prototxt").read_text()) for s in
            zoo.SPLITS}
    for split, net in nets.items():
        assert net == zoo.net(name, split)
        checks = check_crops(net)
        assert all(c.ok for c in checks), (split, checks)
        # every net aligns its score with the input by Crop, except those that resize by Interp (DeepLab,
        # PSPNet) or unpool by SegNet's Upsample
        assert checks or any(l.type in ("Interp", "Upsample") for l in net.layer), split
    # train and val differ only in the data layer's python_param (layer class, param_str), or for SegNet's
    # DenseImageData its dense_image_data_param
    train, val = nets["train"], nets["val"]
    assert train.layer[0].type == val.layer[0].type and train.layer[0].type in ("Python", "DenseImageData",
                                                                                "ImageSegData")
    field = {"Python": "python_param", "DenseImageData": "dense_image_data_param",
             "ImageSegData": "image_data_param"}[train.layer[0].type]
    assert getattr(train.layer[0], field) != getattr(val.layer[0], field)
    getattr(val.layer[0], field).CopyFrom(getattr(train.layer[0], field))
    if train.layer[0].type == "ImageSegData":  # DeepLab: TRAIN/TEST rules and crops differ too
        for f in ("include", "transform_param"):
            val.layer[0].ClearField(f)
            val.layer[0].MergeFrom(type(train.layer[0])(**{f: getattr(train.layer[0], f)}))
    assert train == val
    if name == "deeplabv2_vgg16_voc":  # the release's test head (Interp, Dropout kept): test_deeplab_v2_zoo.py
        return
    # deploy = train without the data layer, losses (and, for FCN, Dropout); Input named input
    deploy = nets["deploy"]
    assert deploy.layer[0].name == "input" and deploy.layer[0].type == "Input"
    strip = {"SoftmaxWithLoss"} | ({"Dropout"} if not name.startswith(("fcn2s", "demo")) else set())
    assert [l.name for l in train.layer[1:] if l.type not in strip] == \
        [l.name for l in deploy.layer[1:]]
    # data paths are repository-relative
    assert "../" not in str(getattr(train.layer[0], field))


@pytest.mark.parametrize("key", sorted(UPSTREAM), ids=lambda k: f"{k[0]}-{k[1]}")
def test_nets_equal_upstream(shared_dir, key):
    mine = zoo.net(*key)
    upstream = prototxt.parse_net(shared_dir / UPSTREAM[key])
    for net in (mine, upstream):
        if net.layer[0].type == "Python":  # paths differ: ours are repository-relative
            net.layer[0].python_param.param_str = ""
    assert mine == upstream


# (zoo model) -> upstream solver with the same settings (the paths aside)
UPSTREAM_SOLVERS = {
    "fcn32s_nyud_color": UP_FCN + "nyud-fcn32s-color/solver.prototxt",
    "fcn32s_nyud_color_d": UP_FCN + "nyud-fcn32s-color-d/solver.prototxt",
    "fcn32s_nyud_color_hha": UP_FCN + "nyud-fcn32s-color-hha/solver.prototxt",
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SOLVERS))
def test_solvers_equal_upstream(shared_dir, name):
    mine = zoo.solver(name)
    upstream = prototxt.parse_solver((shared_dir / UPSTREAM_SOLVERS[name]).read_text())
    assert (mine.train_net, list(mine.test_net)) == (f"prototxt/{name}/train.prototxt",
                                                     [f"prototxt/{name}/val.prototxt"])
    assert mine.snapshot_prefix == f"snapshots/{name}/train"
    for sp in (mine, upstream):
        for path in ("train_net", "test_net", "snapshot_prefix"):
            sp.ClearField(path)
    assert mine == upstream


def _fake_nyud(root, i="5001", h=7, w=9):
    """One NYUDv2 sample in FCN's layout; returns its 16-bit depth."""
    import cv2
    import numpy as np
    from scipy.io import savemat
    rng = np.random.default_rng(0)
    depth = rng.integers(1, 10000, (h, w)).astype(np.uint16)
    images = {"images": rng.integers(0, 256, (h, w, 3)).astype(np.uint8), "depth": depth,
              "hha": rng.integers(0, 256, (h, w, 3)).astype(np.uint8)}
    for folder, image in images.items():
        (root / "data" / folder).mkdir(parents=True)
        cv2.imwrite(str(root / "data" / folder / f"img_{i}.png"), image)
    (root / "segmentation").mkdir()
    savemat(str(root / "segmentation" / f"img_{i}.mat"),
            {"segmentation": rng.integers(0, 41, (h, w)).astype(np.uint8)})
    for split in ("trainval", "test"):
        (root / f"{split}.txt").write_text(f"{i}\n")
    return depth


@pytest.mark.parametrize("name, inputs", [("fcn32s_nyud_color_d", ["color", "depth"]),
                                          ("fcn32s_nyud_color_hha", ["color", "hha"])])
def test_nyud_fusion_nets_get_their_tops_from_the_builtin_data_layer(tmp_path, name, inputs):
    """The fusion nets name their inputs in param_str 'tops', as upstream, and the built-in
    nyud_layers.NYUDSegDataLayer makes exactly those blobs (color and HHA 3 channels, depth 1:
    log(depth) - 7.844), which color-d concatenates into a 4-channel ``data``."""
    import numpy as np
    pytest.importorskip("scipy.io")
    from netspec.layers.python import parse_param_str
    depth = _fake_nyud(tmp_path / "nyud")
    channels = {"color": 3, "depth": 1, "hha": 3}
    for split in ("train", "val"):
        net = zoo.net(name, split)
        p = parse_param_str(net.layer[0].python_param.param_str)
        assert list(net.layer[0].top) == p["tops"] == inputs + ["label"]
        assert p["nyud_dir"] == "data/nyud"
        assert p["split"] == {"train": "trainval", "val": "test"}[split]
        front = type(net)()
        front.layer.extend(net.layer[:2 if name.endswith("_d") else 1])
        front.layer[0].python_param.param_str = net.layer[0].python_param.param_str.replace(
            "data/nyud", str(tmp_path / "nyud"))
        data = netspec.Net(front, netspec.TRAIN if split == "train" else netspec.TEST)
        data.forward(blobs=list(data.blobs))
        for top in inputs:
            assert data.blobs[top].data.shape == (1, channels[top], 7, 9)
        assert data.blobs["label"].data.shape == (1, 1, 7, 9)
        if name.endswith("_d"):
            np.testing.assert_allclose(data.blobs["depth"].data[0, 0],
                                       np.log(depth) - np.float32(7.844), rtol=1e-5)
            assert data.blobs["data"].data.shape == (1, 4, 7, 9)
    deploy = zoo.net(name, "deploy").layer[0]
    assert list(deploy.top) == inputs
    assert [list(s.dim) for s in deploy.input_param.shape] == [[1, channels[t], 500, 500]
                                                               for t in inputs]


def test_voc_data_layers_keep_upstream_param_str_keys():
    train = zoo.net("fcn8s_voc", "train").layer[0].python_param
    val = zoo.net("fcn8s_voc", "val").layer[0].python_param
    assert (train.module, train.layer) == ("voc_layers", "SBDDSegDataLayer")
    assert train.param_str == ("{'sbdd_dir': 'data/sbdd/dataset', 'seed': 1337, 'split': 'train', "
                               "'mean': (104.00699, 116.66877, 122.67892)}")
    assert (val.module, val.layer) == ("voc_layers", "VOCSegDataLayer")
    assert val.param_str == ("{'voc_dir': 'data/pascal/VOC2011', 'seed': 1337, "
                             "'split': 'seg11valid', 'mean': (104.00699, 116.66877, 122.67892)}")
    demo = zoo.net("demo", "train").layer[0].python_param
    assert (demo.module, demo.layer, demo.param_str) == (
        "netspec.data.seg", "SegDataLayer", "{'source': 'data/demo/train', 'seed': 1}")


# -- solvers -------------------------------------------------------------------------------------

FCN_COMMON = dict(momentum=0.99, weight_decay=0.0005, iter_size=1, display=20, average_loss=20,
                  test_interval=999999999, test_initialization=False, lr_policy="fixed", type="SGD")


@pytest.mark.parametrize("name, expect", [
    ("fcn32s_voc", dict(FCN_COMMON, base_lr=1e-10, max_iter=100000, snapshot=4000)),
    ("fcn16s_voc", dict(FCN_COMMON, base_lr=1e-12, max_iter=100000, snapshot=4000)),
    ("fcn8s_voc", dict(FCN_COMMON, base_lr=1e-14, max_iter=100000, snapshot=4000)),
    ("fcn8s_atonce_voc", dict(FCN_COMMON, base_lr=1e-10, max_iter=300000, snapshot=4000)),
    ("fcn2s_vgg16_voc", dict(FCN_COMMON, base_lr=1e-10, max_iter=100000, snapshot=5000)),
    ("fcn2s_vgg19_voc", dict(FCN_COMMON, base_lr=1e-10, max_iter=100000, snapshot=5000)),
    ("fcn2s_vgg16_pascalcontext", dict(FCN_COMMON, base_lr=1e-10, max_iter=300000, snapshot=5000,
                                       test_iter=[5105])),
    ("fcn2s_vgg19_nyud", dict(FCN_COMMON, base_lr=1e-10, max_iter=300000, snapshot=2000, test_iter=[654])),
    ("fcn8s_vgg19_ade20k", dict(lr_policy="multistep", base_lr=1e-4, gamma=0.1,
                                stepvalue=[100000])),
    ("fcn8s_kitti_road", dict(type="Adam", base_lr=1e-4, lr_policy="fixed")),
    ("demo", dict(display=20)),
    ("fcn32s_nyud_color_d", dict(FCN_COMMON, base_lr=1e-10, max_iter=300000, snapshot=2000)),
    ("fcn32s_nyud_color_hha", dict(FCN_COMMON, base_lr=1e-12, max_iter=300000, snapshot=2000)),
    ("attention_fcn_cityscapes", dict(type="SGD", lr_policy="poly", base_lr=1e-3, power=0.95,
                                      momentum=0.9, weight_decay=5e-4, max_iter=90000)),
    ("attention_fcn_voc", dict(type="SGD", lr_policy="poly", base_lr=1e-3, power=0.95,
                               momentum=0.9, weight_decay=5e-4, max_iter=50000)),
])
def test_solver_settings(name, expect):
    sp = prototxt.parse_solver((ROOT / f"solvers/{name}.prototxt").read_text())
    for key, value in expect.items():
        got = getattr(sp, key)
        got = list(got) if key in ("stepvalue", "test_iter") else got
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    assert sp.train_net == f"prototxt/{name}/train.prototxt"
    assert list(sp.test_net) == [f"prototxt/{name}/val.prototxt"]
    assert sp.snapshot_prefix.startswith(f"snapshots/{name}/")
    for path in (sp.train_net, *sp.test_net):
        assert (ROOT / path).is_file()


@pytest.mark.parametrize("name, layer, classes, top_param", [
    ("fcn2s_vgg19_pascalcontext", "PASCALContextSegDataLayer", 60, None),
    ("fcn2s_vgg16_nyud", "NYUDSegDataLayer", 40, "'tops': ['color', 'label']"),
])
def test_dilated_fcn2s_on_context_and_nyud(name, layer, classes, top_param):
    vgg = zoo.net(name.replace("pascalcontext", "voc").replace("nyud", "voc"), "train")
    net = zoo.net(name, "train")
    assert net.layer[0].python_param.layer == layer
    if top_param:
        assert top_param in net.layer[0].python_param.param_str
    # the VOC net's architecture, layer for layer, with the class count of the dataset
    assert [(l.name, l.type) for l in net.layer[1:]] == [(l.name, l.type) for l in vgg.layer[1:]]
    assert {l.convolution_param.num_output for l in net.layer if l.name.startswith(("score_", "upscore"))} == \
        {classes}


def test_voc_test_iters():
    assert [zoo.solver(n).test_iter[0] for n in ("fcn32s_voc", "fcn16s_voc", "fcn8s_voc",
                                                 "fcn8s_atonce_voc", "fcn2s_vgg16_voc")] == \
        [736, 736, 736, 736, 346]


def test_demo_solver_trains_a_normalised_loss():
    sp = zoo.solver("demo")
    assert sp.type == "Adam" and sp.base_lr == pytest.approx(1e-3)
    assert sp.snapshot_prefix.startswith("snapshots/demo/")
    loss = [l for l in zoo.net("demo", "train").layer if l.type == "SoftmaxWithLoss"][0]
    assert loss.loss_param.normalization == loss.loss_param.VALID


# -- building the deploy nets ----------------------------------------------------------------------


def _with_input(net, shape):
    """``net`` with every blob of its Input layer resized to ``shape``'s N, H, W (channels kept:
    the NYUDv2 fusion nets have a 3-channel color and a 1-channel depth input)."""
    for blob in net.layer[0].input_param.shape:
        channels = blob.dim[1]
        del blob.dim[:]
        blob.dim.extend([shape[0], channels, *shape[2:]])
    return net


def test_demo_deploy_builds_and_runs():
    import numpy as np
    net = netspec.Net(zoo.net("demo", "deploy"), netspec.TEST)
    assert net.blobs["score"].shape == (1, 4, 64, 64)
    assert net.blobs["score_fr"].shape == (1, 4, 8, 8)
    assert net.blobs["upscore2"].shape == (1, 4, 18, 18)
    assert net.blobs["upscore_pool2"].shape == (1, 4, 34, 34)
    assert net.blobs["upscore_pool1"].shape == (1, 4, 66, 66)
    crops = [(l.name, list(l.bottom), l.crop_param.offset[0])
             for l in zoo.net("demo", "deploy").layer if l.type == "Crop"]
    assert crops == [("upscore2c", ["upscore2", "score_pool2"], 1),
                     ("upscore_pool2c", ["upscore_pool2", "score_pool1"], 1),
                     ("score", ["upscore_pool1", "data"], 1)]
    out = net.forward(data=np.random.RandomState(0).rand(1, 3, 64, 64).astype(np.float32))
    assert out["score"].shape == (1, 4, 64, 64)


def _table(shared_dir, title):
    """{layer index: (name, tops, shapes)} of one table of FCN_LAYER_TABLES.md."""
    text = (shared_dir / "design" / "FCN_LAYER_TABLES.md").read_text()
    section = text.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            tops = cells[3].split("→")[1].strip().split(",")
            shapes = [tuple(int(d) for d in s.split("x")) for s in cells[5].split()
                      if re.fullmatch(r"\d+(x\d+)*", s)]
            rows.append((cells[1], cells[2], [t.strip() for t in tops], shapes))
    assert rows, title
    return rows


@pytest.mark.parametrize("name, title", [
    ("fcn8s_voc", "voc-fcn8s (deploy)"),
    ("fcn32s_voc", "voc-fcn32s (train; val identical except data layer)"),
    ("fcn2s_vgg19_voc", "Dilated FCN-2s VGG19 (deploy, HEAD)"),
    ("fcn32s_nyud_color_d", "nyud-fcn32s-color-d (trainval; early fusion, 4-ch Concat)"),
    ("fcn32s_nyud_color_hha", "nyud-fcn32s-color-hha (trainval; late fusion)"),
])
def test_deploy_shapes_at_375x500_equal_the_published_tables(shared_dir, name, title):
    net = netspec.Net(_with_input(zoo.net(name, "deploy"), [1, 3, 375, 500]), netspec.TEST)
    rows = _table(shared_dir, title)
    skip = {"Python", "Input", "SoftmaxWithLoss", "Dropout"}  # data, loss: train-only rows
    assert [n for n, t, _, _ in rows if t not in skip] == \
        [l.name for l in net.layers if l.type not in skip | {"Split"}]
    checked = 0
    for lname, ltype, tops, shapes in rows:
        if ltype in skip:
            continue
        for top, shape in zip(tops, shapes):
            assert net.blobs[top].shape == shape, (lname, top)
            checked += 1
    assert checked >= 38


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.names()
                                  if n not in ("demo", "fcn8s_voc", "fcn32s_voc", "fcn2s_vgg19_voc",
                                               "fcn32s_nyud_color_d", "fcn32s_nyud_color_hha",
                                               "segnet_camvid",  # SegNet: H, W multiples of 32
                                               "deeplabv2_vgg16_voc")])  # DeepLab v2: 8(h-1)+1 x 8(w-1)+1
def test_every_deploy_net_builds(name):
    net = netspec.Net(_with_input(zoo.net(name, "deploy"), [1, 3, 375, 500]), netspec.TEST)
    for out in net.outputs:
        assert net.blobs[out].shape[2:] == (375, 500)
