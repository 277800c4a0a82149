"""Every command in docs/*.md, run as written, so the guides cannot rot.

How: each page's ```bash blocks are split into commands (one per line, backslash continuations joined) and run
through bash in a scratch directory laid out like a checkout (tools/, prototxt/, solvers/, netspec/ linked),
with fake downloads built in the real layouts (tests/docs_support.py: VOC, SBD, ADE20K, Cityscapes, KITTI road
trees with tiny 48x64 images; V1 VGG16/VGG19 caffemodels with the real layer names and shapes and random
weights; a cut-down ResNet-50 with BatchNorm). ```python / ```prototxt blocks opening with ``# <name>`` are the
files a page asks the reader to save; they are written before the commands run. The only changes to a
command are the documented shortening: ``--max-iter 2`` appended to training, and the snapshot names of the
full schedule (``_iter_100000``) read as ``_iter_2`` (``docs_support.shorten``); the -m slow test of the GPU
commands also adapts process counts, the multi-node address and the benchmark sizes to one CPU machine (its
docstring lists how).

Default run (about a minute and a half on 2 cores): every tool command of every page parsed by the tool's own
argument parser and every repository file it names checked (cheap, catches renamed flags and files), the demo
based pages run for real, and the data preparation of the dataset pages. ``-m slow``: every remaining command,
i.e. the VGG-sized nets. Those are slow mainly because ``tools/train.py`` scores ``test_iter`` batches of the
test net after the last iteration (736 VGG16 forwards for the VOC FCNs, 2,000 for ADE20K), which --max-iter
does not shorten (the guides' quick tries add --test-iter); each pad-100 VGG forward costs about a second on a
CPU core even for a tiny image.
"""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

import docs_support as D

PAGES = ["coming_from_caffe.md", "voc_sbd.md", "ade20k.md", "cityscapes.md", "kitti_road.md",
         "porting_weights.md", "exporting.md", "multi_gpu.md", "precision_and_speed.md", "architecture.md"]
ITERS = 2


class KnownBug(Exception):
    """The failure an xfail(strict=True) test expects; any other failure of that test is a real failure."""


def _known_bug(cmd, w, signature):
    """Run ``cmd``; raise KnownBug when it fails with ``signature`` in its output, fail the test when it fails
    otherwise, and return when it succeeds (the strict xfail then reports XPASS: the bug is gone)."""
    r = D.run(cmd, w, expect_fail=None)
    if r.returncode != 0:
        if signature in r.stdout + r.stderr:
            raise KnownBug(signature)
        pytest.fail(f"$ {cmd}\nexit {r.returncode}, not the known problem:\n{r.stderr[-4000:]}")
    return r


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the pages as a whole ------------------------------------------------------------------------------------------

def test_readme_links_every_page_and_every_page_has_commands():
    readme = (D.REPO / "README.md").read_text()
    on_disk = sorted(p.name for p in D.DOCS.glob("*.md")
                     if p.name not in ("schema_extensions.md", "caffe_forks.md"))  # reference pages, no commands
    assert sorted(PAGES) == on_disk
    for page in PAGES:
        assert f"(docs/{page})" in readme, page
        assert D.commands(page), page
        D.page_files(page)                               # every python/prototxt block names its file
        for link in re.findall(r"\]\(([\w_]+\.md)(?:#[\w-]+)?\)", (D.DOCS / page).read_text()):
            assert (D.DOCS / link).exists(), f"{page} links to missing {link}"


PARSE_CHECK = r'''
import argparse, json, runpy, sys
from torch.distributed.run import get_args_parser

class Parsed(Exception):
    pass

_orig = argparse.ArgumentParser.parse_args
def _parse(self, args=None, namespace=None):
    _orig(self, args, namespace)
    raise Parsed()
argparse.ArgumentParser.parse_args = _parse

bad = []
for argv in json.loads(sys.argv[1]):
    if argv[0] == "torchrun":
        ns = get_args_parser().parse_known_args(argv[1:])[0]
        argv = [ns.training_script] + ns.training_script_args
    sys.argv = list(argv)
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1]] + argv[2:]
            runpy.run_module(argv[1], run_name="__main__")
        else:
            runpy.run_path(argv[0], run_name="__main__")
        bad.append(f"{argv}: ran without parsing arguments")
    except Parsed:
        pass
    except SystemExit as e:
        bad.append(f"{argv}: exit {e.code}")
print(json.dumps(bad))
'''


def _tool_argv(cmd):
    """argv of a command that runs a repository tool (python tools/x.py, python bench/x.py, python -m netspec...,
    torchrun ... tools/x.py), with leading VAR=value and shell redirections dropped; None for other commands."""
    words = [w for w in cmd.split() if not re.fullmatch(r"[A-Z_]+=\S*", w)]
    words = words[:next((i for i, w in enumerate(words) if w in (">", "2>", "|", "&&")), len(words))]
    if words[0] == "torchrun":
        return words
    if words[0] == "python" and len(words) > 2 and (words[1].startswith(("tools/", "bench/"))
                                                    or (words[1] == "-m" and words[2].startswith("netspec"))):
        return words[1:]
    return None


def test_every_tool_command_parses_and_names_existing_repository_files():
    """The cheap net under the real runs: every tool invocation of every page (also the -m slow ones) goes
    through the tool's own argument parser, and every solver/prototxt/tool path it names exists."""
    cases = []
    for page in PAGES:
        for cmd in D.commands(page):
            argv = _tool_argv(cmd)
            if argv is None:
                continue
            cases.append(argv)
            for word in argv:
                if re.match(r"(solvers|prototxt|tools|bench)/", word):
                    assert (D.REPO / word).exists(), f"{page}: `{cmd}` names {word}, which does not exist"
    assert len(cases) > 40
    r = subprocess.run([sys.executable, "-c", PARSE_CHECK, json.dumps(cases)], cwd=D.REPO, capture_output=True,
                       text=True, timeout=600, env=D.env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


# -- the demo-based pages -------------------------------------------------------------------------------------------

#: porting_weights.md's and exporting.md's command for the demo's images; the fixture runs it for both pages.
SYNTHETIC_PNG = "python -m netspec.data.synthetic data/demo --export-images data/demo/val_png"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A checkout-like directory with the demo dataset and a shortened demo training (snapshots/demo/
    demo_iter_2.*, demo_train.log): coming_from_caffe.md's first command, shared by the pages that use it."""
    w = D.workdir(tmp_path_factory.mktemp("demo"))
    D.run(SYNTHETIC_PNG, w)
    train = D.find("coming_from_caffe.md", "tools/train.py", "2> demo_train.log")
    D.run(D.shorten(train, ITERS), w)
    snaps = w / "snapshots" / "demo"
    assert (snaps / f"demo_iter_{ITERS}.caffemodel").exists()
    for n in (1000, 2000):   # the pages' snapshot names of the full schedule, in files they ask to save too
        for ext in ("caffemodel", "solverstate"):
            os.symlink(f"demo_iter_{ITERS}.{ext}", snaps / f"demo_iter_{n}.{ext}")
    return w


def _copy_demo(demo, tmp):
    import shutil
    w = D.workdir(tmp)
    shutil.copytree(demo / "data", w / "data", symlinks=True)
    shutil.copytree(demo / "snapshots", w / "snapshots")
    shutil.copy(demo / "demo_train.log", w)
    return w


def _run_page(page, w, skip=(), only=None):
    """Run the page's commands in order (shortened), except those containing a string of ``skip``; with
    ``only``, just those containing a string of it. Returns {command: CompletedProcess}."""
    D.save_files(page, w)
    done = {}
    for cmd in D.commands(page):
        if any(s in cmd for s in skip) or (only is not None and not any(s in cmd for s in only)):
            continue
        done[cmd] = D.run(D.shorten(cmd, ITERS), w)
    return done


COMING_SLOW = ("--snapshot", "plot_log", "draw_net")


def test_coming_from_caffe(demo, tmp_path):
    w = _copy_demo(demo, tmp_path)
    done = _run_page("coming_from_caffe.md", w, skip=("2> demo_train.log", "normalize_layer.py") + COMING_SLOW)
    out = done[D.find("coming_from_caffe.md", "tools/test.py")]
    assert "Running for 20 iterations." in out.stderr and re.search(r"Loss: [0-9.]+", out.stderr)
    timing = done[D.find("coming_from_caffe.md", "tools/time.py", "demo/train")].stdout
    assert "Convolution" in timing and "(sum)" in timing
    assert "iteration 10: loss" in done[D.find("coming_from_caffe.md", "pycaffe_demo.py")].stdout
    assert re.search(r"^loss\s+Python\s", done[D.find("coming_from_caffe.md", "l1_net")].stdout, re.M)
    # Caffe's -solver spelling, live CSV scalars, and final scores that name the images they cover
    short = done[D.find("coming_from_caffe.md", "tools/train.py -solver")]
    rows = (w / "demo_scalars.csv").read_text().splitlines()
    assert rows[0] == "iteration,tag,value" and any(",train/loss," in r for r in rows)
    assert any(",score/mean IU," in r for r in rows)
    assert re.search(r"^>>> Iteration 2 test net #0: 5 batches x 1 = 5 of the 50 images of data/demo/val",
                     short.stdout, re.M), short.stdout


@pytest.mark.slow
def test_coming_from_caffe_resume_plot_draw(demo, tmp_path):
    w = _copy_demo(demo, tmp_path)
    # (the 40-iteration run writing demo_short.log, which plot_log compares with the full log, runs here too)
    done = _run_page("coming_from_caffe.md", w, only=COMING_SLOW + ("2> demo_short.log",))
    assert "Restoring previous solver status from snapshots/demo/demo_iter_" in done[
        D.find("coming_from_caffe.md", "--snapshot")].stderr
    assert (w / "demo_train.png").stat().st_size > 0 and (w / "demo_net.txt").exists()
    assert (w / "compare.png").stat().st_size > 0


def test_coming_from_caffe_own_proto_fields(tmp_path):
    w = D.workdir(tmp_path)
    D.save_files("coming_from_caffe.md", w)
    (w / "myfork").mkdir()
    src = (D.REPO / "netspec" / "proto" / "caffe.proto").read_text()   # a fork's caffe.proto: netspec's + a field
    at = src.index("  optional CropParameter crop_param = 144;")
    (w / "myfork" / "caffe.proto").write_text(
        src[:at] + "  optional MyNormParameter my_norm_param = 3001;\n" + src[at:]
        + "\nmessage MyNormParameter {\n  optional bool across_spatial = 1 [default = true];\n"
          "  optional FillerParameter scale_filler = 2;\n  optional bool channel_shared = 3 [default = true];\n"
          "  optional float eps = 4 [default = 1e-10];\n}\n")
    out = D.run(D.find("coming_from_caffe.md", "normalize_layer.py"), w).stdout
    assert re.search(r"channel norm at one pixel: 19\.9\d+|channel norm at one pixel: 20\.0", out), out
    assert (w / "conv4_3_norm.caffemodel").exists()


@pytest.fixture(scope="module")
def vgg(tmp_path_factory):
    """downloads/ with V1 VGG16/VGG19 caffemodels and the VGG16 deploy prototxt, shared (each ~550 MB)."""
    d = tmp_path_factory.mktemp("vgg") / "downloads"
    d.mkdir()
    D.fake_vgg_caffemodel(d / "VGG_ILSVRC_16_layers.caffemodel", 16)
    D.fake_vgg_prototxt(d / "VGG_ILSVRC_16_layers_deploy.prototxt", 16)
    D.fake_vgg_caffemodel(d / "VGG_ILSVRC_19_layers.caffemodel", 19)
    return d


PORTING_SLOW = ("VGG_ILSVRC", "load_weights.py", "ResNet-50", "check_fold.py", "--fp16")


def test_porting_weights(demo, tmp_path):
    w = _copy_demo(demo, tmp_path)
    assert SYNTHETIC_PNG in D.commands("porting_weights.md")
    done = _run_page("porting_weights.md", w, skip=PORTING_SLOW + (SYNTHETIC_PNG,))
    assert "same argmax on 100.0% of pixels" in done[D.find("porting_weights.md", "opencv_check.py")].stdout
    assert (w / "demo_from_pt.caffemodel").stat().st_size > 0


@pytest.mark.slow
def test_porting_weights_whole_page(demo, vgg, tmp_path):
    w = _copy_demo(demo, tmp_path)
    D.fake_resnet(w / "downloads")
    for f in vgg.iterdir():
        os.symlink(f, w / "downloads" / f.name)
    done = _run_page("porting_weights.md", w)           # the whole page: load_weights.py needs demo.pt too
    assert "folded into the preceding layer: bn_conv1, scale_conv1" in done[
        D.find("porting_weights.md", "resnet50-folded.caffemodel", "--fold-bn")].stdout
    assert "max difference" in done[D.find("porting_weights.md", "check_fold.py")].stdout
    import torch
    half = torch.load(w / "demo_fp16.pt", weights_only=True)
    assert {t.dtype for t in half.values()} == {torch.float16}
    listing = done[D.find("porting_weights.md", "--list")].stdout
    assert "format: V1" in listing and "fc6" in listing and "138,357,544 parameters" in listing
    assert "VGG16 class scores: (1, 1000)" in done[D.find("porting_weights.md", "load_weights.py")].stdout
    upgraded = (w / "vgg16_deploy.prototxt").read_text()
    assert "layer {" in upgraded and "layers {" not in upgraded and 'type: "Convolution"' in upgraded


EXPORT_SLOW = ("fcn8s",)


def test_exporting(demo, tmp_path):
    w = _copy_demo(demo, tmp_path)
    assert SYNTHETIC_PNG in D.commands("exporting.md")
    done = _run_page("exporting.md", w, skip=EXPORT_SLOW + (SYNTHETIC_PNG,))
    out = done[D.find("exporting.md", "demo.onnx")].stdout
    assert "check passed" in out and "torchscript: input 2x3x" in out and "torch.export: input 2x3x" in out
    assert "classes found:" in done[D.find("exporting.md", "run_exported.py")].stdout


def test_multi_gpu_cpu_rehearsals(tmp_path):
    """The two CPU launches of the page, as written but for --max-iter 2 and a free port (29500 may be taken by
    another run on this machine). The multi-node rehearsal is the page's multi-node command shape with one
    node: two machines cannot be had here."""
    w = D.workdir(tmp_path)
    port = str(_free_port())
    done = {}
    for cmd in D.commands("multi_gpu.md"):
        if "demo" in cmd:
            done[cmd] = D.run(D.shorten(cmd.replace("29500", port), ITERS), w)
    assert len(done) == 3
    for cmd, r in done.items():
        if cmd.startswith("torchrun"):
            assert f"Snapshotting to binary proto file snapshots/demo/demo_iter_{ITERS}.caffemodel" in r.stderr
            assert r.stdout.count("mean IU") == 1          # only rank 0 scores
    multi = D.find("multi_gpu.md", "--nnodes 2", "--node_rank 0")
    rehearsal = D.find("multi_gpu.md", "--nnodes 1")
    shape = lambda c: re.findall(r"--(nnodes|node_rank|nproc_per_node|master_addr|master_port) ", c)
    assert shape(multi) == shape(rehearsal)


PROBE = r'''
import hashlib, torch.distributed as dist
from netspec.solver.solvers import Solver
dist.init_process_group("gloo")
s = Solver("solvers/demo.prototxt")
s.net.forward()
open(f"digest_{dist.get_rank()}.txt", "w").write(hashlib.md5(s.net.blobs["data"].data.tobytes()).hexdigest())
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_multi_gpu_ranks_draw_their_own_batches(tmp_path):
    """multi_gpu.md: each process reads its own part of the data (the page's earlier 'known limitation', every
    process drawing the same batches, is gone)."""
    w = D.workdir(tmp_path)
    (w / "probe.py").write_text(PROBE)
    D.run(D.find("multi_gpu.md", "netspec.data.synthetic"), w)  # the page's "build it beforehand" (a script's
    # Solver does not pack the demo data: tools/train.py does, authoring.zoo.demo.pack_missing_data)
    r = D.run(f"torchrun --nproc_per_node 2 --master_port {_free_port()} probe.py", w)
    digests = [(w / f"digest_{rank}.txt").read_text() for rank in (0, 1)]  # (one file each: stdout interleaves)
    assert all(re.fullmatch(r"[0-9a-f]{32}", d) for d in digests) and digests[0] != digests[1], r.stderr[-3000:]


PRECISION_SLOW = ("--compile", "attention_fcn_cityscapes", "fcn8s_voc", "--checkpoint-activations")


def test_precision_and_speed_demo(demo, tmp_path):
    w = _copy_demo(demo, tmp_path)
    done = _run_page("precision_and_speed.md", w, skip=PRECISION_SLOW + ("fp16",))
    assert len(done) == 1
    for r in done.values():
        assert re.search(r"^mean IU [0-9.]+$", r.stdout, re.M)


def test_precision_fp16_runs(demo, tmp_path):
    # the losses compute in float32 under autocast (fp16's pixel sum of the demo's first loss was inf)
    w = _copy_demo(demo, tmp_path)
    r = D.run(D.shorten(D.find("precision_and_speed.md", "--precision fp16"), ITERS), w)
    assert re.search(r"^mean IU [0-9.]+$", r.stdout, re.M)


# -- the dataset pages ----------------------------------------------------------------------------------------------

HEAVY = ("surgery.py", "tools/train.py", "tools/score.py", "tools/infer.py")


def _voc_downloads(w):
    d = w / "downloads"
    D.fake_voc(d / "TrainVal" / "VOCdevkit", 2011, {"seg11valid": ["2007_000033", "2007_000129"]})
    (d / "seg11valid.txt").write_text("2007_000033\n2007_000129\n")
    (w / "downloads" / "TrainVal" / "VOCdevkit" / "VOC2011" / "ImageSets" / "Segmentation" / "seg11valid.txt").unlink()
    D.fake_sbd(d, {"train": ["2008_000002", "2008_000003", "2008_000007"], "val": ["2008_000008"]})
    D.fake_voc(d / "VOCdevkit", 2012, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]})
    (d / "seg12val.txt").write_text("2007_000033\n")


def _dataset_downloads(page, w):
    if page == "voc_sbd.md":
        _voc_downloads(w)
    elif page == "ade20k.md":
        D.fake_ade20k(w / "downloads")
    elif page == "cityscapes.md":
        D.fake_cityscapes(w / "downloads" / "cityscapes")
    elif page == "kitti_road.md":
        D.fake_kitti_road(w / "downloads")


ZOO_MODELS = {"voc_sbd.md": ["fcn32s_voc", "fcn2s_vgg19_voc"], "ade20k.md": ["fcn8s_vgg19_ade20k"],
              "cityscapes.md": ["attention_fcn_cityscapes"], "kitti_road.md": ["fcn8s_kitti_road"]}


@pytest.mark.parametrize("page", ["voc_sbd.md", "ade20k.md", "cityscapes.md", "kitti_road.md"])
def test_dataset_page_data_preparation(page, tmp_path, monkeypatch):
    """Links, lists and packing: every command of the page that is not surgery, training, scoring or inference.
    Then the data layers of the page's zoo nets (train and val) read a batch from what the commands made."""
    from netspec import TEST, TRAIN, Net
    from netspec.formats import prototxt
    w = D.workdir(tmp_path)
    _dataset_downloads(page, w)
    done = _run_page(page, w, skip=HEAVY)
    assert done
    for cmd, r in done.items():
        if "build_seg_lmdb.py" in cmd:
            out = cmd.split()[4]
            assert (w / out / "images" / "data.mdb").exists() and (w / out / "class_weights.txt").exists()
            assert re.search(r"^packed [1-9]\d* ", r.stdout, re.M)
    if page == "voc_sbd.md":
        for split in ("VOC2011/ImageSets/Segmentation/seg11valid.txt", "VOC2012/ImageSets/Segmentation/seg12val.txt"):
            assert (w / "data" / "pascal" / split).exists()
        assert (w / "data" / "sbdd" / "dataset" / "train.txt").exists()
    if page == "kitti_road.md":
        assert len((w / "downloads" / "data_road" / "val.txt").read_text().split()) == 1   # 1 of the 4 fake images
    monkeypatch.chdir(w)
    for model in ZOO_MODELS[page]:
        for split, phase in (("train", TRAIN), ("val", TEST)):
            full = prototxt.read_net(str(D.REPO / "prototxt" / model / f"{split}.prototxt"))
            data_only = type(full)(name=model)
            data_only.layer.add().CopyFrom(full.layer[0])
            assert full.layer[0].type == "Python" and list(full.layer[0].top) == ["data", "label"]
            net = Net(data_only, phase)
            net.forward()
            assert net.blobs["data"].data.shape[2:] == net.blobs["label"].data.shape[2:]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["voc_sbd.md", "ade20k.md", "kitti_road.md", "cityscapes.md"])
def test_dataset_page_end_to_end(page, vgg, tmp_path):
    """The whole page in order: data, surgery from the (fake) VGG weights, shortened training (then the final
    scoring pass over test_iter batches), score.py, infer.py."""
    if page == "cityscapes.md" and not (D.REPO / "solvers" / "attention_fcn_cityscapes.prototxt").exists():
        pytest.skip("solvers/attention_fcn_cityscapes.prototxt (the zoo's attention FCN) is not in the tree yet")
    w = D.workdir(tmp_path)
    _dataset_downloads(page, w)
    for f in vgg.iterdir():
        os.symlink(f, w / "downloads" / f.name)
    done = _run_page(page, w)
    for cmd, r in done.items():
        if "surgery.py" in cmd:
            assert "still zero:" in r.stdout and "bilinear:" in r.stdout
        if "tools/score.py" in cmd or "tools/train.py" in cmd:
            D.mean_iu(r.stdout)
        if "tools/infer.py" in cmd:
            out = w / cmd.split("--out ")[1].split()[0]
            assert list((out / "labels").glob("*.png")) and list((out / "overlay").glob("*.png"))


@pytest.mark.slow
def test_heavy_demo_and_fcn8s_commands(demo, vgg, tmp_path):
    """What remains of exporting.md, multi_gpu.md and precision_and_speed.md: the FCN-8s and Cityscapes
    commands, --compile and --checkpoint-activations. FCN-8s weights come from the surgery of voc_sbd.md (a
    stand-in for a trained snapshot, which has the same layers). torchrun runs 2 processes instead of 4 or 8
    (CPU cores); node 0's multi-node command runs with one node on 127.0.0.1 (the same command shape: two
    machines cannot be had), and node 1's, which differs only in --node_rank, is covered by the parse check. The
    benchmark runs at 64x64 for one iteration in two modes (its documented CPU form; compiling the VGG nets on a
    CPU takes many minutes, and --compile is run on the demo), time.py for one iteration."""
    w = _copy_demo(demo, tmp_path)
    _voc_downloads(w)
    D.fake_cityscapes(w / "downloads" / "cityscapes")
    for f in vgg.iterdir():
        os.symlink(f, w / "downloads" / f.name)
    for cmd in D.commands("voc_sbd.md"):
        if "ln -s" in cmd or "mkdir" in cmd or cmd.startswith("cp "):
            D.run(cmd, w)
    D.run("python tools/surgery.py prototxt/fcn8s_voc/deploy.prototxt downloads/VGG_ILSVRC_16_layers.caffemodel "
          "fcn16s-fcn8s.caffemodel", w)
    (w / "snapshots" / "fcn8s_voc").mkdir(parents=True)
    os.symlink(w / "fcn16s-fcn8s.caffemodel", w / "snapshots" / "fcn8s_voc" / f"train_iter_{ITERS}.caffemodel")
    for cmd in D.commands("cityscapes.md"):
        if "build_seg_lmdb" in cmd:
            D.run(cmd, w)
    _run_page("exporting.md", w, only=EXPORT_SLOW)
    port = str(_free_port())
    node0, node1 = (D.find("multi_gpu.md", "--nnodes 2", f"--node_rank {k}") for k in (0, 1))
    assert node0.replace("--node_rank 0", "--node_rank 1") == node1
    for cmd in D.commands("multi_gpu.md"):
        if "fcn8s_voc" in cmd and cmd != node1:
            cmd = re.sub(r"--nproc_per_node \d+", "--nproc_per_node 2", cmd)
            cmd = cmd.replace("--nnodes 2", "--nnodes 1").replace("10.1.1.1", "127.0.0.1").replace("29500", port)
            D.run(D.shorten(cmd, ITERS), w)
    for cmd in D.commands("precision_and_speed.md"):
        if any(s in cmd for s in PRECISION_SLOW):
            if "bench_train_gpu" in cmd:
                cmd += " --device cpu --size 64 --iters 1 --warmup 0 --modes fp32,bf16_cl_ckpt"
            if "tools/time.py" in cmd:
                cmd += " --iterations 1"
            D.run(D.shorten(cmd, ITERS), w)


ADD_A_LAYER_CHECK = r"""
import numpy as np, torch, hsigmoid, netspec
from netspec.registry import LAYERS
entry = LAYERS.get("HSigmoid")
assert entry.pure and entry.coord == "identity" and entry.example
x = torch.tensor([-4.0, -3.0, 0.0, 3.0, 4.0])
assert torch.equal(hsigmoid.HSigmoid()(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
net = netspec.Net("hsigmoid_net.prototxt", netspec.TEST)
conv = net.forward()["gate"]
want = np.clip(net.blobs["conv"].data + 3, 0, 6) / 6
assert np.allclose(conv, want)
print("ok")
"""


def test_architecture_add_a_layer(tmp_path):
    """The worked example of docs/architecture.md: the layer file, the net and the command run as written, the
    registry holds the declared facts, and the output is the formula's."""
    cwd = D.workdir(tmp_path)
    D.save_files("architecture.md", cwd)
    r = D.run(D.find("architecture.md", "hsigmoid_net.prototxt"), cwd)
    assert r.stdout.strip().endswith("(1, 4, 3, 3)"), r.stdout
    r = D.run(f"python -c '{ADD_A_LAYER_CHECK}'", cwd)
    assert r.stdout.strip() == "ok"
