"""The persistent compile cache of frozen inference (``Net.configure(compile=True, freeze=True)``): the net's
forward for the input shapes of the moment, exported with ``torch.export`` and compiled ahead of time with
AOTInductor into a ``.pt2`` package, stored under a cache folder and loaded on the next run (no dynamo tracing).

A package is keyed by a SHA-256 digest of everything that shapes the compiled code: the NetParameter (serialized),
the bytes of every parameter and buffer (frozen weights are baked in), the input names, shapes and dtypes,
channels_last, the precision, the device, the torch and Python versions, the CPU's vector ISA, and the netspec
sources (a change to a layer's code invalidates every package). The folder: ``cache_dir=`` of configure, else
``$NETSPEC_CACHE_DIR/compiled``, else ``$XDG_CACHE_HOME/netspec/compiled`` (``~/.cache/netspec/compiled``).
Deleting the folder (or any file in it) clears the cache; packages are written atomically (netspec.formats.atomic).
"""
import hashlib
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..formats.atomic import atomic_write

log = logging.getLogger("netspec")

_SOURCES: Optional[str] = None


def default_dir() -> Path:
    """Where packages go when configure names no folder (see the module docstring)."""
    env = os.environ.get("NETSPEC_CACHE_DIR")
    if env:
        return Path(env).expanduser() / "compiled"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netspec" / "compiled"


#: The sources that decide what a net's forward computes: the layers, the net runner and folding, the
#: proto-to-proto passes, the registry (tools, solver, data loading and so on do not invalidate packages).
_FORWARD_SOURCES = ("layers/**/*.py", "passes/*.py", "formats/*.py", "net/caffe_net.py", "net/fold.py",
                    "net/compile_cache.py", "registry.py", "proto/*.py")


def _sources_digest() -> str:
    """A digest of the netspec sources that shape the forward (read once per process, a few ms)."""
    global _SOURCES
    if _SOURCES is None:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parents[1]
        for p in sorted({p for pattern in _FORWARD_SOURCES for p in root.glob(pattern)}):
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        _SOURCES = h.hexdigest()
    return _SOURCES


def _tensor_bytes(t: torch.Tensor):
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""


def cache_key(net_param, module: nn.Module, inputs: Dict[str, torch.Tensor], *, channels_last: bool,
              precision: Optional[torch.dtype], device: torch.device) -> str:
    """The SHA-256 hex digest naming a package (see the module docstring for what goes in)."""
    h = hashlib.sha256()

    def put(*parts):
        for part in parts:
            h.update(part if isinstance(part, (bytes, bytearray)) else str(part).encode())
            h.update(b"\0")

    put("netspec-aoti-1", torch.__version__, sys.version_info[:3], platform.machine(),
        torch.backends.cpu.get_cpu_capability(), _sources_digest())
    put(net_param.SerializeToString(deterministic=True))
    for name, t in sorted(module.state_dict(keep_vars=True).items()):
        put(name, t.dtype, tuple(t.shape))
        h.update(_tensor_bytes(t))
    for name in sorted(inputs):
        t = inputs[name]
        put(name, t.dtype, tuple(t.shape), t.stride())
    put("channels_last" if channels_last else "contiguous", precision, device.type,
        torch.cuda.get_device_name(device) if device.type == "cuda" else "")
    return h.hexdigest()


class _Forward(nn.Module):
    """The CaffeNet's forward (a dict of input blobs -> a dict of output blobs) under autocast when asked."""

    def __init__(self, net: nn.Module, amp: Optional[torch.dtype], device_type: str):
        super().__init__()
        self.net, self.amp, self.device_type = net, amp, device_type

    def forward(self, inputs: Dict[str, torch.Tensor]):
        if self.amp is None:
            return self.net(inputs)
        with torch.autocast(self.device_type, dtype=self.amp):
            return self.net(inputs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


class AotCache:
    """The compiled forwards of one configured Net, one per input signature: loaded from the cache folder,
    or exported, compiled and stored there on a miss. ``runner(inputs)`` is None once export or AOTInductor
    has failed for the net (the caller then uses torch.compile); the failure is logged once, as a warning."""

    def __init__(self, net, cache_dir=None):
        self.net = net
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_dir()
        self._runners: Dict[tuple, Callable] = {}
        self.failed: Optional[str] = None
        self.last_path: Optional[Path] = None
        self.last_event: Optional[str] = None  # "hit" or "compiled", for tests and benches

    def runner(self, inputs: Dict[str, torch.Tensor]) -> Optional[Callable]:
        if self.failed is not None:
            return None
        sig = tuple((n, tuple(t.shape), t.dtype, t.stride(), t.device) for n, t in sorted(inputs.items()))
        run = self._runners.get(sig)
        if run is None:
            try:
                run = self._load_or_compile(inputs)
            except Exception as e:  # noqa: BLE001 - any export / compile failure: fall back to torch.compile
                self.failed = _first_line(e)
                log.warning("frozen inference: no ahead-of-time compiled package (%s); using torch.compile",
                            self.failed)
                return None
            self._runners[sig] = run
        return run

    def path_for(self, inputs: Dict[str, torch.Tensor]) -> Path:
        net = self.net
        device = net._device()
        key = cache_key(net.net_param, net.module, inputs, channels_last=net._channels_last,
                        precision=net._amp, device=device)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", net.name or "net")[:60]
        return self.dir / f"{stem}-{key[:32]}.pt2"

    def _load_or_compile(self, inputs: Dict[str, torch.Tensor]) -> Callable:
        path = self.path_for(inputs)
        self.last_path = path
        if path.exists():
            t0 = time.perf_counter()
            try:
                run = torch._inductor.aoti_load_package(str(path))
            except Exception as e:  # noqa: BLE001 - a stale or damaged package: compile it again
                log.warning("could not load the compiled package %s (%s); compiling again", path, _first_line(e))
            else:
                self.last_event = "hit"
                log.info("loaded the compiled net from %s in %.1f s", path, time.perf_counter() - t0)
                return run
        t0 = time.perf_counter()
        wrapper = _Forward(self.net.module, self.net._amp, self.net._device().type)
        # (the caller's autocast is off while tracing: _Forward applies the net's precision itself)
        with torch.no_grad(), torch.autocast(self.net._device().type, enabled=False):
            exported = torch.export.export(wrapper, (dict(inputs),), strict=False)
            t1 = time.perf_counter()
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                torch._inductor.aoti_compile_and_package(exported, package_path=f,
                                                         inductor_configs={"freezing": True})
        run = torch._inductor.aoti_load_package(str(path))
        self.last_event = "compiled"
        log.info("compiled the net ahead of time in %.1f s (export %.1f s) into %s",
                 time.perf_counter() - t0, t1 - t0, path)
        return run
