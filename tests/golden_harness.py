"""Compare netspec against the golden data a real BVLC Caffe build produced (../shared/golden).

A case directory holds net.prototxt, weights.caffemodel, inputs.npz, forward.npz and (usually) backward.npz;
see ../shared/golden/README.md. The gate is ||ours - caffe|| / ||caffe|| per blob and per param diff.
"""
import json
from pathlib import Path

import numpy as np

import netspec
from netspec.net.pycaffe import Net


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64).reshape(ref.shape)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(ours - ref)
    return num / den if den > 0 else num


def load_case(case_dir):
    case_dir = Path(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text())
    phase = netspec.TRAIN if meta.get("phase") == "TRAIN" else netspec.TEST
    net = Net(str(case_dir / "net.prototxt"), str(case_dir / "weights.caffemodel"), phase)
    return net, meta


def run_case(case_dir, fwd_tol: float = 1e-5, bwd_tol: float = 1e-4, bwd_overrides=None):
    """Run one golden case; raise AssertionError listing every blob out of tolerance.

    ``bwd_overrides`` maps backward keys to a looser tolerance, for documented exceptions only."""
    bwd_overrides = bwd_overrides or {}
    case_dir = Path(case_dir)
    net, meta = load_case(case_dir)
    inputs = np.load(case_dir / "inputs.npz")
    for k in inputs.files:
        if k.startswith("topdiff/"):
            continue
        v = inputs[k]
        net.blobs[k].reshape(*v.shape)
        net.blobs[k].data[...] = v
    net.forward()
    bad = []
    fwd = np.load(case_dir / "forward.npz")
    for k in fwd.files:
        ref = fwd[k]
        if k.startswith("param/"):
            _, layer, i = k.rsplit("/", 2)
            ours = net.params[layer][int(i)].data
        else:
            ours = net.blobs[k].data
        if tuple(np.shape(ours)) != tuple(ref.shape) and np.size(ours) != ref.size:
            bad.append(f"forward {k}: shape {np.shape(ours)} vs caffe {ref.shape}")
            continue
        e = rel_err(ours, ref)
        if e > fwd_tol:
            bad.append(f"forward {k}: rel err {e:.3g}")
    bwd_path = case_dir / "backward.npz"
    if bwd_path.exists():
        net.clear_param_diffs()
        for k in inputs.files:
            if k.startswith("topdiff/"):
                net.blobs[k[len("topdiff/"):]].diff[...] = inputs[k]
        net.backward()
        bwd = np.load(bwd_path)
        for k in bwd.files:
            ref = bwd[k]
            if k.startswith("param/"):
                _, layer, i = k.rsplit("/", 2)
                ours = net.params[layer][int(i)].diff
            else:
                blob = k[len("diff/"):]
                if blob in net.inputs and not net.module.force_backward:
                    # Caffe leaves scratch values in the diff of a blob that needs no backward (e.g. Scale
                    # writes top_diff * x there); it is not a gradient, so there is nothing to compare.
                    continue
                ours = net.blobs[blob].diff
            e = rel_err(ours, ref)
            if e > bwd_overrides.get(k, bwd_tol):
                bad.append(f"backward {k}: rel err {e:.3g}")
    assert not bad, f"{case_dir.name}: " + "; ".join(bad)
    return net
