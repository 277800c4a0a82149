"""Exact resume: what a ``.solverstate`` does not hold, in a sidecar file beside it.

Caffe's snapshot is the weights (``.caffemodel``) and the solver's history (``.solverstate``); a resumed Caffe
run restarts its data stream and random generators, so it does not repeat the uninterrupted run. netspec writes
the rest of the training state to ``<prefix>_iter_N.trainstate`` (rank r > 0 of a multi-process run:
``<prefix>_iter_N.rank<r>.trainstate``), so that resuming reproduces the uninterrupted run bit for bit on the
CPU: every random generator (torch, CUDA, numpy's global one, Python's ``random``) and the position of every
layer that reads data or draws its own random numbers. The ``.solverstate`` stays exactly what Caffe writes
(real Caffe reads it; it ignores the sidecar).

A layer takes part by having ``train_state()`` (a value made of tuples, lists, dicts, numbers, strings and
numpy arrays) and ``load_train_state(state)``: on its module, or, for a Python layer, on the ``Layer`` object.
The state is taken between iterations, after read-ahead workers have been rewound to the consumer's position.

The file is a ``torch.save`` archive of plain containers and tensors, read back with
``torch.load(weights_only=True)``: loading it runs no code.
"""
import logging
import random
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch

from ..formats.atomic import atomic_path
from ..errors import SolverError

log = logging.getLogger("netspec")

EXT = ".trainstate"
FORMAT = 1


def sidecar(solverstate_path: str, rank: int = 0) -> str:
    """The sidecar path of a ``.solverstate`` (for ``rank``)."""
    base = solverstate_path[:-len(".solverstate")] if solverstate_path.endswith(".solverstate") \
        else solverstate_path
    return f"{base}{f'.rank{rank}' if rank else ''}{EXT}"


def stateful_layers(net) -> Iterator[Tuple[str, object]]:
    """(layer name, object with train_state/load_train_state) for every such layer of a pycaffe ``Net``."""
    for node in net.module.nodes:
        module = net.module.get_module(node.index)
        obj = module if hasattr(module, "train_state") else getattr(module, "layer", None)
        if obj is not None and hasattr(obj, "train_state") and hasattr(obj, "load_train_state"):
            yield node.name, obj


def _encode(x):
    """numpy arrays (any dtype) as raw uint8 tensors with dtype and shape; numpy scalars as Python numbers."""
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        return {"__ndarray__": torch.frombuffer(bytearray(a.tobytes()) or bytearray(1), dtype=torch.uint8),
                "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_encode(v) for v in x)
    return x


def _decode(x):
    if isinstance(x, dict):
        if "__ndarray__" in x:
            raw = x["__ndarray__"].numpy().tobytes()[:x["nbytes"]]
            return np.frombuffer(raw, dtype=np.dtype(x["dtype"])).reshape(x["shape"]).copy()
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_decode(v) for v in x)
    return x


def _rng_state() -> Dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: Dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def capture(solver, nets: List) -> Dict:
    """The training state of ``solver`` (its iteration, its generators, the layers of ``nets``)."""
    return {"format": FORMAT, "iter": solver.iter, "rng": _rng_state(),
            "loss_scale": solver._loss_scale,
            "nets": [{name: obj.train_state() for name, obj in stateful_layers(net)} for net in nets]}


def save(path: str, state: Dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(_encode(state), tmp)


def load(path: str) -> Dict:
    try:
        state = _decode(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise SolverError(f"{path}: not a netspec training state ({type(e).__name__}: {e}); delete it to resume "
                          "without it (the data stream then restarts)") from e
    found = state.get("format") if isinstance(state, dict) else "?"
    if found != FORMAT:
        raise SolverError(f"{path}: unknown training-state format {found} (this netspec writes {FORMAT})")
    return state


def apply(solver, nets: List, state: Dict, path: str) -> None:
    """Put ``state`` (from :func:`load`) back into ``solver`` and the layers of ``nets``."""
    if state["iter"] != solver.iter:
        raise SolverError(f"{path} is the training state of iteration {state['iter']}, the solver state is at "
                          f"iteration {solver.iter}: they are not from the same snapshot")
    for i, (net, layers) in enumerate(zip(nets, state["nets"])):
        have = dict(stateful_layers(net))
        missing = sorted(set(layers) - set(have))
        if missing:
            raise SolverError(f"{path}: net #{i} has no layer {missing} that the training state was saved from "
                              "(was the snapshot written for another net?)")
        for name, s in layers.items():
            have[name].load_train_state(s)
    solver._loss_scale = state["loss_scale"]
    _set_rng_state(state["rng"])
