"""Helpers for tests/test_docs.py: read the commands out of the docs pages, run them as written in a scratch
directory laid out like a checkout, and build tiny fake datasets (and a fake VGG ILSVRC caffemodel) in the
layouts of the real downloads, so the pages' commands run end to end without the network."""
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

#: Fake images are this small so the VGG nets run an iteration in about a second on a CPU core.
H, W = 48, 64


# -- the pages ------------------------------------------------------------------------------------------------

def blocks(page: str, lang: str = "bash"):
    """The fenced ``lang`` blocks of docs/<page>, in order, backslash-continued lines joined."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return [b.replace("\\\n", " ") for b in re.findall(rf"```{lang}\n(.*?)```", text, re.S)]


def commands(page: str):
    """Every command of the page's bash blocks, one per (joined) line, comments and blanks dropped."""
    out = []
    for b in blocks(page):
        for line in b.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(re.sub(r"\s+#.*$", "", line) if " #" in line else line)
    return out


def page_files(page: str):
    """{file name: text} of the page's ```python / ```prototxt blocks that open with ``# <name>``: the files the
    page asks the reader to save."""
    out = {}
    for lang in ("python", "prototxt"):
        for b in blocks(page, lang):
            first = b.splitlines()[0]
            m = re.match(r"#\s*([\w./-]+\.(?:py|prototxt))\b", first)
            assert m, f"{page}: a ```{lang} block must open with '# <file name>', not {first!r}"
            out[m.group(1)] = b
    return out


def save_files(page: str, cwd: Path):
    for name, text in page_files(page).items():
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(text)


def find(cmds, *needles):
    """The one command containing every needle (fails loudly when the page changed)."""
    cmds = commands(cmds) if isinstance(cmds, str) else cmds
    hits = [c for c in cmds if all(n in c for n in needles)]
    assert len(hits) == 1, f"expected one command with {needles}, found {hits}"
    return hits[0]


# -- running ---------------------------------------------------------------------------------------------------

def workdir(tmp: Path) -> Path:
    """A scratch directory that looks like a checkout: tools/, prototxt/, solvers/ linked to the repository's."""
    for d in ("netspec", "tools", "prototxt", "solvers", "bench"):
        os.symlink(REPO / d, tmp / d)
    return tmp


def env(**extra):
    e = {"PYTHONPATH": str(REPO), "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin",
         "OMP_NUM_THREADS": "2", "HOME": os.environ.get("HOME", "/tmp")}
    e.update(extra)
    return e


def shorten(cmd: str, iters: int = 2) -> str:
    """The documented shortening ("for a quick try, add --max-iter 20 --test-iter 5"): training commands get
    ``--max-iter N`` appended (argparse keeps the last value), and ``--test-iter N`` unless they give one (the
    final scores then cover N batches, not the solver's test_iter: 736 VOC validation images of a VGG net), and
    the snapshot names of the full schedule (``..._iter_100000.caffemodel``) become ``_iter_N``."""
    if "tools/train.py" in cmd:
        cmd += f" --max-iter {iters}"
        if "--test-iter" not in cmd:
            cmd += f" --test-iter {iters}"
    return re.sub(r"_iter_\d+\.(caffemodel|solverstate)", rf"_iter_{iters}.\1", cmd)


def run(cmd: str, cwd: Path, timeout: int = 1800, expect_fail: bool = False, extra_env=None):
    """Run one documented command as written, through bash, in ``cwd`` (a :func:`workdir`), with this
    interpreter first on PATH (so ``python`` and ``torchrun`` are this environment's). Fails the test on a
    non-zero exit (with ``expect_fail=True``: on success; ``None``: never). Returns the CompletedProcess."""
    r = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=env(**(extra_env or {})))
    if expect_fail is None:   # the caller looks at the result
        return r
    ok = (r.returncode != 0) if expect_fail else (r.returncode == 0)
    assert ok, f"$ {cmd}\nexit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}"
    return r


def mean_iu(stdout: str) -> float:
    m = re.search(r"^mean IU ([0-9.na]+)$", stdout, re.M)
    assert m, stdout[-2000:]
    return float(m.group(1))


# -- fake datasets in the real layouts --------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def _image(rng, path, ext_flags=()):
    """A random colour image with a few flat blocks (so a label can follow them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img, list(ext_flags))


def _labels(rng, n_classes, ignore=255):
    lab = rng.integers(0, n_classes, (H, W)).astype(np.uint8)
    lab[0, :4] = ignore
    return lab


def palette_png(path, idx):
    """An 8-bit palette PNG of class indices with VOC's colour map (as SegmentationClass/*.png are)."""
    from netspec.tools.infer import voc_palette
    idx = np.asarray(idx, np.uint8)
    h, w = idx.shape
    raw = b"".join(b"\x00" + idx[y].tobytes() for y in range(h))

    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
                           + chunk(b"PLTE", voc_palette(256).astype(np.uint8).tobytes())
                           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _write_list(path, ids):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{i}\n" for i in ids))


def fake_voc(root, year, splits, seed=0):
    """``root``/VOC<year>: JPEGImages, SegmentationClass (palette PNGs), ImageSets/Segmentation/<split>.txt.
    ``splits``: {split: [ids]}."""
    rng, voc = _rng(seed), Path(root) / f"VOC{year}"
    for split, ids in splits.items():
        for i in ids:
            if not (voc / "JPEGImages" / f"{i}.jpg").exists():
                _image(rng, voc / "JPEGImages" / f"{i}.jpg")
                palette_png(voc / "SegmentationClass" / f"{i}.png", _labels(rng, 21))
        _write_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", ids)
    return voc


def fake_sbd(root, splits, seed=1):
    """``root``/benchmark_RELEASE/dataset: img/*.jpg, cls/*.mat (GTcls.Segmentation), <split>.txt."""
    import scipy.io
    rng, ds = _rng(seed), Path(root) / "benchmark_RELEASE" / "dataset"
    for split, ids in splits.items():
        for i in ids:
            _image(rng, ds / "img" / f"{i}.jpg")
            (ds / "cls").mkdir(parents=True, exist_ok=True)
            lab = rng.integers(0, 21, (H, W)).astype(np.uint8)
            scipy.io.savemat(str(ds / "cls" / f"{i}.mat"),
                             {"GTcls": {"Segmentation": lab, "Boundaries": np.zeros((21, 1), object),
                                        "CategoriesPresent": np.unique(lab)[1:]}})
        _write_list(ds / f"{split}.txt", ids)
    return ds


def fake_ade20k(root, n=(3, 2), seed=2):
    """``root``/ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png (0..150)."""
    rng, ade = _rng(seed), Path(root) / "ADEChallengeData2016"
    for sub, prefix, count in (("training", "ADE_train", n[0]), ("validation", "ADE_val", n[1])):
        for k in range(1, count + 1):
            stem = f"{prefix}_{k:08d}"
            _image(rng, ade / "images" / sub / f"{stem}.jpg")
            (ade / "annotations" / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(ade / "annotations" / sub / f"{stem}.png"), rng.integers(0, 151, (H, W)).astype(np.uint8))
    return ade


def fake_cityscapes(root, seed=3):
    """``root``/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png, gtFine/.../*_gtFine_labelIds.png (0..33)."""
    rng, root = _rng(seed), Path(root)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for k, city in enumerate(cities):
            base = f"{city}_{k:06d}_000019"
            _image(rng, root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt / f"{base}_gtFine_labelIds.png"), rng.integers(0, 34, (H, W)).astype(np.uint8))
            cv2.imwrite(str(gt / f"{base}_gtFine_color.png"), np.zeros((H, W, 3), np.uint8))   # not read
    return root


def fake_kitti_road(root, seed=4):
    """``root``/data_road/{training,testing}: image_2/*.png, training/gt_image_2/<cat>_road_<n>.png
    (BGR: red = not road, magenta = road, black = outside the evaluated area)."""
    rng, dr = _rng(seed), Path(root) / "data_road"
    colours = np.array([[0, 0, 255], [255, 0, 255], [0, 0, 0]], np.uint8)
    for stem in ("um_000000", "umm_000001", "uu_000002", "uu_000003"):
        _image(rng, dr / "training" / "image_2" / f"{stem}.png")
        cat, num = stem.split("_")
        (dr / "training" / "gt_image_2").mkdir(parents=True, exist_ok=True)
        which = rng.integers(0, 3, (H, W))
        cv2.imwrite(str(dr / "training" / "gt_image_2" / f"{cat}_road_{num}.png"), colours[which])
        if cat == "um":
            cv2.imwrite(str(dr / "training" / "gt_image_2" / f"{cat}_lane_{num}.png"), colours[which])
    _image(rng, dr / "testing" / "image_2" / "um_000010.png")
    return dr


VGG = {  # layer name -> weight shape, of the ILSVRC-2014 VGG nets (configurations D and E)
    16: [("conv1_1", (64, 3)), ("conv1_2", (64, 64)), ("conv2_1", (128, 64)), ("conv2_2", (128, 128)),
         ("conv3_1", (256, 128)), ("conv3_2", (256, 256)), ("conv3_3", (256, 256)),
         ("conv4_1", (512, 256)), ("conv4_2", (512, 512)), ("conv4_3", (512, 512)),
         ("conv5_1", (512, 512)), ("conv5_2", (512, 512)), ("conv5_3", (512, 512))],
}
VGG[19] = (VGG[16][:6] + [("conv3_3", (256, 256)), ("conv3_4", (256, 256))] + VGG[16][7:9]
           + [("conv4_3", (512, 512)), ("conv4_4", (512, 512))] + VGG[16][10:12]
           + [("conv5_3", (512, 512)), ("conv5_4", (512, 512))])


def fake_vgg_layers(depth=16):
    """(name, V1 type, params) of VGG_ILSVRC_<depth>_layers in order, as in the released deploy prototxt."""
    from netspec.proto import caffe_pb2
    V1 = caffe_pb2.V1LayerParameter
    out, stage = [], None
    for name, (o, i) in VGG[depth]:
        s = name[4]
        if stage is not None and s != stage:
            out.append((f"pool{stage}", V1.POOLING, None))
        stage = s
        out.append((name, V1.CONVOLUTION, (o, i, 3, 3)))
        out.append((name.replace("conv", "relu"), V1.RELU, None))
    out.append(("pool5", V1.POOLING, None))
    for k, shape in ((6, (4096, 25088)), (7, (4096, 4096)), (8, (1000, 4096))):
        out.append((f"fc{k}", V1.INNER_PRODUCT, shape))
        if k < 8:
            out += [(f"relu{k}", V1.RELU, None), (f"drop{k}", V1.DROPOUT, None)]
    out.append(("prob", V1.SOFTMAX, None))
    return out


def fake_vgg_net(depth=16):
    """The V1 NetParameter of VGG_ILSVRC_<depth>_layers_deploy.prototxt (``input_dim: 10 3 224 224``)."""
    from netspec.proto import caffe_pb2
    V1 = caffe_pb2.V1LayerParameter
    net = caffe_pb2.NetParameter(name=f"VGG_ILSVRC_{depth}_layers")
    net.input.append("data")
    net.input_dim.extend([10, 3, 224, 224])
    bottom = "data"
    for name, kind, shape in fake_vgg_layers(depth):
        top = bottom if kind in (V1.RELU, V1.DROPOUT) else name
        layer = net.layers.add(name=name, type=kind, bottom=[bottom], top=[top])
        if kind == V1.CONVOLUTION:
            layer.convolution_param.num_output = shape[0]
            layer.convolution_param.pad.append(1)
            layer.convolution_param.kernel_size.append(3)
        elif kind == V1.INNER_PRODUCT:
            layer.inner_product_param.num_output = shape[0]
        elif kind == V1.POOLING:
            layer.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
            layer.pooling_param.kernel_size = 2
            layer.pooling_param.stride = 2
        elif kind == V1.DROPOUT:
            layer.dropout_param.dropout_ratio = 0.5
        bottom = top
    return net


def fake_vgg_caffemodel(path, depth=16, seed=5):
    """A V1-format caffemodel (``layers { type: CONVOLUTION }``, legacy 4-D blob dims) with the layers and blob
    shapes of VGG_ILSVRC_<depth>_layers.caffemodel (fc6 a 4096 x 25088 InnerProduct, fc7, fc8) and small random
    weights: ~550 MB, as the real file."""
    from netspec.formats import binary
    net = fake_vgg_net(depth)
    rng, blobs = _rng(seed), []
    shapes = {name: shape for name, _, shape in fake_vgg_layers(depth)}
    for layer in net.layers:
        shape = shapes[layer.name]
        if shape is None:
            blobs.append([])
            continue
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(0.01)
        arrays = [a.reshape((1,) * (4 - a.ndim) + a.shape) for a in (w, np.zeros(shape[0], np.float32))]
        for a in arrays:   # legacy num/channels/height/width, as the V1 release stores them
            layer.blobs.add(num=a.shape[0], channels=a.shape[1], height=a.shape[2], width=a.shape[3])
        blobs.append(arrays)
    binary.write_caffemodel(path, net, v1_blobs_per_layer=blobs)
    return path


def fake_vgg_prototxt(path, depth=16):
    """VGG_ILSVRC_<depth>_layers_deploy.prototxt as released: V1 text format."""
    from netspec.formats import prototxt
    Path(path).write_text(prototxt.to_text(fake_vgg_net(depth)))
    return path


RESNET_DEPLOY = """name: "ResNet-50"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 224
input_dim: 224
layer { bottom: "data" top: "conv1" name: "conv1" type: "Convolution"
  convolution_param { num_output: 64 kernel_size: 7 pad: 3 stride: 2 } }
layer { bottom: "conv1" top: "conv1" name: "bn_conv1" type: "BatchNorm" batch_norm_param { use_global_stats: true } }
layer { bottom: "conv1" top: "conv1" name: "scale_conv1" type: "Scale" scale_param { bias_term: true } }
layer { bottom: "conv1" top: "conv1" name: "conv1_relu" type: "ReLU" }
layer { bottom: "conv1" top: "pool1" name: "pool1" type: "Pooling"
  pooling_param { kernel_size: 3 stride: 2 pool: MAX } }
layer { bottom: "pool1" top: "res2a_branch2a" name: "res2a_branch2a" type: "Convolution"
  convolution_param { num_output: 64 kernel_size: 1 pad: 0 stride: 1 bias_term: false } }
layer { bottom: "res2a_branch2a" top: "res2a_branch2a" name: "bn2a_branch2a" type: "BatchNorm"
  batch_norm_param { use_global_stats: true } }
layer { bottom: "res2a_branch2a" top: "res2a_branch2a" name: "scale2a_branch2a" type: "Scale"
  scale_param { bias_term: true } }
layer { bottom: "res2a_branch2a" top: "res2a_branch2a" name: "res2a_branch2a_relu" type: "ReLU" }
layer { bottom: "res2a_branch2a" top: "pool5" name: "pool5" type: "Pooling"
  pooling_param { pool: AVE global_pooling: true } }
layer { bottom: "pool5" top: "fc1000" name: "fc1000" type: "InnerProduct" inner_product_param { num_output: 1000 } }
layer { bottom: "fc1000" top: "prob" name: "prob" type: "Softmax" }
"""


def fake_resnet(folder, seed=6):
    """ResNet-50-deploy.prototxt / ResNet-50-model.caffemodel as KaimingHe/deep-residual-networks names them,
    cut down to the first block (the layer types and naming of the real files: Convolution, BatchNorm with
    its 3 blobs, Scale with bias, InnerProduct), random weights and running statistics."""
    import netspec
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ResNet-50-deploy.prototxt").write_text(RESNET_DEPLOY)
    net = netspec.Net(str(folder / "ResNet-50-deploy.prototxt"), netspec.TEST)
    rng = _rng(seed)
    for name, blobs in net.params.items():
        for k, b in enumerate(blobs):
            shape = b.data.shape
            if name.startswith("bn"):
                b.data[...] = (rng.standard_normal(shape) if k == 0 else rng.uniform(0.5, 2, shape) if k == 1
                               else np.full(shape, 0.999))   # mean, variance, Caffe's moving-average factor
            else:
                b.data[...] = rng.standard_normal(shape) * 0.1
    net.save(str(folder / "ResNet-50-model.caffemodel"))
    return folder
