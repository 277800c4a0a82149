"""Atomic file writes, the one way netspec writes a file a user keeps (snapshots, caffemodels, prototxts,
state dicts): a temporary file beside the target, flushed and fsynced, renamed over it (``os.replace``), then
the directory fsynced. Readers see the old file or the complete new one; a failure removes the temporary."""
import contextlib
import os
import secrets
from pathlib import Path


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` for writers that take a path (``torch.save``); fsynced and renamed over
    ``path`` on success, removed on failure."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        yield str(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kw):
    """``with atomic_write(path) as f: f.write(...)``; ``mode`` "wb" or "w" (text: pass ``encoding=``)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, mode, **open_kw) as f:  # (the fault tests inject a full disk through os.fdopen)
            yield f
