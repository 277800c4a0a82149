"""pycaffe's global mode switches: CPU/GPU and the device id, read by Net and solvers at build time."""
import logging

import torch

log = logging.getLogger("netspec")

_state = {"device": torch.device("cpu"), "gpu_id": 0, "dialect": None, "strict_weights": False}


def set_mode_cpu():
    _state["device"] = torch.device("cpu")


def set_mode_gpu():
    if not torch.cuda.is_available():
        log.warning("set_mode_gpu(): no CUDA device is available; staying on CPU")
        _state["device"] = torch.device("cpu")
        return
    _state["device"] = torch.device("cuda", _state["gpu_id"])


def set_device(gpu_id: int):
    _state["gpu_id"] = int(gpu_id)
    if _state["device"].type == "cuda":
        _state["device"] = torch.device("cuda", int(gpu_id))


def device() -> torch.device:
    return _state["device"]


def set_dialect(name):
    """The Caffe fork whose meaning ambiguous layer types take in every net built from now on (the tools'
    ``--dialect``; ``Net(..., dialect=)`` overrides it for one net). None: recognise it from each net."""
    from ..passes.dialects import check_dialect
    _state["dialect"] = check_dialect(name)


def dialect():
    return _state["dialect"]


def set_strict_weights(on: bool = True):
    """Every weights load from now on fails when a layer with parameters gets nothing (the tools'
    ``--strict-weights``; ``Net(..., strict=True)`` for one net)."""
    _state["strict_weights"] = bool(on)


def strict_weights() -> bool:
    return _state["strict_weights"]


def set_random_seed(seed: int):
    """Seed the fillers and Dropout (Caffe's random_seed)."""
    torch.manual_seed(int(seed))


def rank() -> int:
    """This process's rank in a multi-process run (torchrun), 0 otherwise."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_root() -> bool:
    """Whether this process tests, scores and snapshots (Caffe's root solver)."""
    return rank() == 0
