"""Caffe image databases in LMDB: read (as Caffe's DataLayer does), write (atomically), build and summarise.

Reading opens the environment ``readonly=True, lock=False``: nothing is written next to the database (no
``lock.mdb``), read-only media work, and any number of processes can read at once. Each process opens its own
environment (an LMDB handle must not cross ``fork``): readers and cursors reopen themselves when they find
they are in a new process, and pickle without their handles, so they can go to ``DataLoader`` workers.
Without a lock, a database being written by another process at the same time may be read inconsistently.

Writing goes to ``<path>.partial`` and is renamed to ``<path>`` only when every record is committed, so an
interrupted ``convert_imageset`` never leaves a database that looks complete.

LevelDB databases (Caffe's other backend) are recognised and refused with the way to convert them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import threading
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .datum import decode_datum, key_str, parse_datum, read_image_list, read_image_to_datum

log = logging.getLogger("netspec")

__all__ = [
    "is_leveldb", "check_lmdb", "LMDBReader", "WrapCursor", "LMDBWriter", "leveldb_to_lmdb",
    "convert_imageset", "compute_image_mean",
]

_LEVELDB_HINT = (
    "netspec reads LMDB only. Convert it once with `pip install plyvel` and "
    "`python -m netspec.data.lmdb_io leveldb-to-lmdb {src} {src}_lmdb` (or re-create it with "
    "tools/convert_imageset.py --backend lmdb), then set `backend: LMDB` and `source: \"{src}_lmdb\"`")


def _lmdb():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - lmdb is a dependency
        raise DataError("reading Caffe databases needs the 'lmdb' package: pip install lmdb") from None
    return lmdb


def is_leveldb(path) -> bool:
    """True if ``path`` is a LevelDB directory (CURRENT + MANIFEST-*, or *.ldb / *.sst tables)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    if "data.mdb" in names:
        return False
    if "CURRENT" in names and any(n.startswith("MANIFEST-") for n in names):
        return True
    return any(n.endswith((".ldb", ".sst")) for n in names) or ("CURRENT" in names and "LOG" in names)


def check_lmdb(path, what: str = "LMDB") -> str:
    """Validate that ``path`` is a readable LMDB (a directory with data.mdb, or the data file itself)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.isdir(path.rstrip("/") + ".partial"):
            raise DataError(f"{what} '{path}' was never finished: an interrupted write left "
                            f"'{path.rstrip('/')}.partial'; run the conversion again")
        raise DataError(f"{what} '{path}' not found (working directory {os.getcwd()}); Caffe resolves "
                        "relative paths against the working directory")
    if is_leveldb(path):
        raise DataError(f"{what} '{path}' is a LevelDB database. " + _LEVELDB_HINT.format(src=path.rstrip("/")))
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "data.mdb")):
        if os.path.isdir(path + ".partial") or path.endswith(".partial"):
            raise DataError(f"{what} '{path}' is an unfinished database (an interrupted write left "
                            f"'{path}.partial'); run the conversion again")
        raise DataError(f"{what} '{path}' is a directory without data.mdb: not an LMDB database")
    return path


# One read-only environment per (process, database), shared by every reader and cursor of that process:
# LMDB forbids opening one environment twice in a process (two nets, or a net's TRAIN and TEST Data layers,
# may read the same database). Reference-counted; py-lmdb always uses MDB_NOTLS, so threads may share it.
_ENVS = {}
# Re-entrant: a reader's __del__ releases its environment, and garbage collection may run that finalizer in a thread
# that already holds the lock (any allocation inside _acquire_env can trigger it): a plain Lock deadlocked there.
_ENVS_LOCK = threading.RLock()


def _reset_after_fork():
    # A thread of the parent may have held the lock at fork time; the child's own copy starts free. (The
    # inherited environments are closed by _acquire_env on first use.)
    global _ENVS_LOCK
    _ENVS_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _acquire_env(path: str):
    lmdb = _lmdb()
    pid = os.getpid()
    key = (pid, os.path.realpath(path))
    with _ENVS_LOCK:
        for k in [k for k in _ENVS if k[0] != pid]:
            # Inherited through fork. py-lmdb refuses a second open of a path it still has open, so close the
            # child's copy (lock=False: this only unmaps the child's view; the parent is unaffected).
            try:
                _ENVS.pop(k)[0].close()
            except Exception:  # pragma: no cover
                pass
        entry = _ENVS.get(key)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        try:
            env = lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path), readahead=False,
                            max_readers=512)
        except lmdb.Error as e:
            raise DataError(f"cannot open LMDB '{path}': {e}") from None
        try:
            _check_not_truncated(path, env)
        except BaseException:
            env.close()
            raise
        _ENVS[key] = [env, 1]
        return env


def _check_not_truncated(path: str, env) -> None:
    """Refuse a data file shorter than the pages its meta page says are in use (an interrupted copy, a full disk):
    LMDB maps the file and would die of SIGBUS on the first read past its end, with no Python error."""
    data_file = os.path.join(path, "data.mdb") if os.path.isdir(path) else path
    try:
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        have = os.path.getsize(data_file)
    except (_lmdb().Error, OSError) as e:
        raise DataError(f"cannot open LMDB '{path}': {e}") from None
    if have < need:
        raise DataError(f"LMDB '{path}' is truncated: {data_file} has {have} bytes but its pages in use end at byte "
                        f"{need} (an interrupted copy or a full disk?); copy it again or rebuild it")


@contextlib.contextmanager
def _reading(path: str):
    """LMDB's own errors (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...) as DataError naming the database."""
    try:
        yield
    except _lmdb().Error as e:
        raise DataError(f"LMDB '{path}' cannot be read: {e}; the database is corrupt, rebuild it") from None


def _release_env(path: str, env) -> None:
    key = (os.getpid(), os.path.realpath(path))
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None or entry[0] is not env:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _ENVS[key]
            env.close()


class LMDBReader:
    """Random and sequential read access to one LMDB, safe to pass to other processes.

    ``reader[i]`` (the serialized value) and ``len(reader)`` follow key order (the order Caffe's DataLayer reads);
    ``reader.get(key)`` one record's value; ``reader.datum(i)`` / ``reader.array(i)`` decode it.
    """

    def __init__(self, path):
        self.path = check_lmdb(path)
        self._env = None
        self._pid = None
        self._keys: Optional[List[bytes]] = None

    # -- per-process handle ---------------------------------------------------------------------------------
    @property
    def env(self):
        if self._env is None or self._pid != os.getpid():
            self._env = _acquire_env(self.path)
            self._pid = os.getpid()
        return self._env

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_env"] = None
        state["_pid"] = None
        return state

    def close(self):
        if self._env is not None and self._pid == os.getpid():
            _release_env(self.path, self._env)
        self._env = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- access ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with _reading(self.path):
            return self.env.stat()["entries"]

    def keys(self) -> List[bytes]:
        if self._keys is None:
            with _reading(self.path), self.env.begin(buffers=False) as txn:
                self._keys = list(txn.cursor().iternext(keys=True, values=False))
        return self._keys

    def get(self, key) -> bytes:
        if isinstance(key, str):
            key = key.encode()
        with _reading(self.path), self.env.begin(buffers=False) as txn:
            value = txn.get(key)
        if value is None:
            raise DataError(f"LMDB '{self.path}' has no record '{key_str(key)}'")
        return value

    def __getitem__(self, i: int) -> bytes:
        """The serialized value of the ``i``-th record in key order (its key is ``keys()[i]``)."""
        return self.get(self.keys()[i])

    def items(self) -> Iterator[Tuple[bytes, bytes]]:
        with _reading(self.path), self.env.begin(buffers=False) as txn:
            yield from txn.cursor().iternext(keys=True, values=True)

    def first(self) -> Tuple[bytes, bytes]:
        with _reading(self.path), self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            if not cur.first():
                raise DataError(f"LMDB '{self.path}' has no records")
            return cur.key(), cur.value()

    def datum(self, i: int):
        key = self.keys()[i]
        return parse_datum(self.get(key), key)

    def array(self, i: int, **kw) -> np.ndarray:
        key = self.keys()[i]
        return decode_datum(self.get(key), key, **kw)

    def cursor(self, start=None) -> "WrapCursor":
        return WrapCursor(self.path, start)


class WrapCursor:
    """Caffe's DataLayer cursor: reads records in key order and restarts from the first after the last.

    ``position`` is the key of the next record (picklable; ``WrapCursor(path, position)`` continues there).
    The read transaction and environment are reopened in a new process.
    """

    def __init__(self, path, start=None):
        self.path = check_lmdb(path)
        self.position: Optional[bytes] = start.encode() if isinstance(start, str) else start
        self.wraps = 0
        self._env = self._txn = self._cur = None
        self._pid = None

    def _open(self):
        if self._cur is not None and self._pid == os.getpid():
            return
        self._env = _acquire_env(self.path)
        self._pid = os.getpid()
        with _reading(self.path):
            self._txn = self._env.begin(buffers=False)
            self._cur = self._txn.cursor()
            ok = self._cur.set_range(self.position) if self.position is not None else self._cur.first()
            if not ok and not self._cur.first():
                raise DataError(f"LMDB '{self.path}' has no records")

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_env=None, _txn=None, _cur=None, _pid=None)
        return state

    def next(self, values: bool = True) -> Tuple[bytes, Optional[bytes]]:
        """The next (key, value), wrapping around at the end as Caffe ("Restarting data prefetching").
        ``values=False`` gives (key, None) without copying the value."""
        self._open()
        with _reading(self.path):
            key = self._cur.key()
            value = self._cur.value() if values else None
            if not self._cur.next():
                self._cur.first()
                self.wraps += 1
                log.debug("LMDB '%s': restarting data prefetching from start", self.path)
            self.position = self._cur.key()
        return key, value

    __next__ = next

    def __iter__(self):
        return self

    def close(self):
        if self._pid == os.getpid():
            if self._txn is not None:
                self._txn.abort()
            if self._env is not None:
                _release_env(self.path, self._env)
        self._env = self._txn = self._cur = None
        self._pid = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class LMDBWriter:
    """Write records into a new LMDB atomically: into ``<path>.partial``, renamed to ``<path>`` by ``finish()``.

    Use as a context manager; an exception (or Ctrl-C) removes the partial directory. Records are committed
    every ``commit_every`` puts (Caffe commits every 1000); the map grows as needed.
    """

    def __init__(self, path, commit_every: int = 1000, map_size: int = 1 << 30, overwrite: bool = False):
        self.path = os.fspath(path).rstrip("/") or "/"
        self.partial = self.path + ".partial"
        if os.path.exists(self.path):
            if not overwrite:
                raise DataError(f"database '{self.path}' already exists; remove it or choose another name")
        if os.path.exists(self.partial):
            log.warning("removing '%s' left by an interrupted write", self.partial)
            shutil.rmtree(self.partial)
        self.overwrite = overwrite
        os.makedirs(self.partial)
        self._map_size = int(map_size)
        self._env = _lmdb().open(self.partial, map_size=self._map_size, subdir=True, lock=True)
        self._pending: List[Tuple[bytes, bytes]] = []
        self.commit_every = int(commit_every)
        self.count = 0
        self._done = False

    def put(self, key, value: bytes):
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(value, (bytes, bytearray)):
            value = value.SerializeToString()
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        lmdb = _lmdb()
        while self._pending:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in self._pending:
                        txn.put(k, v)
                self._pending = []
            except lmdb.MapFullError:
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)

    def finish(self) -> str:
        self.commit()
        self._env.sync(True)
        self._env.close()
        lock = os.path.join(self.partial, "lock.mdb")
        if os.path.exists(lock):
            os.remove(lock)
        if os.path.exists(self.path) and self.overwrite:
            shutil.rmtree(self.path)
        os.rename(self.partial, self.path)
        self._done = True
        return self.path

    def abort(self):
        if self._done:
            return
        self._done = True
        try:
            self._env.close()
        finally:
            shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.finish()
        else:
            self.abort()
        return False


def leveldb_to_lmdb(src, dst) -> int:
    """Copy a Caffe LevelDB (needs ``pip install plyvel``) into a new LMDB, keys and values unchanged."""
    try:
        import plyvel
    except ImportError:
        raise DataError("converting a LevelDB needs the 'plyvel' package: pip install plyvel") from None
    db = plyvel.DB(os.fspath(src), create_if_missing=False)
    try:
        with LMDBWriter(dst) as w:
            for k, v in db.iterator():
                w.put(k, v)
        return w.count
    finally:
        db.close()


def _backend_lmdb(backend: str):
    if backend.lower() != "lmdb":
        raise DataError(f"backend '{backend}' is not supported; netspec writes and reads LMDB only "
                        "(use --backend lmdb)")


def convert_imageset(root_folder: str, list_file, db_name, *, resize_height: int = 0, resize_width: int = 0,
                     shuffle: bool = False, gray: bool = False, encoded: bool = False, encode_type: str = "",
                     check_size: bool = False, backend: str = "lmdb", seed: Optional[int] = None,
                     progress: bool = False, skip_missing: bool = True) -> int:
    """Caffe's ``convert_imageset ROOTFOLDER/ LISTFILE DB_NAME``: every ``<path> <label>`` line of the list
    becomes a Datum under the key ``%08d_<path>`` (line index, as Caffe).

    ``root_folder`` is prepended to each path verbatim (Caffe: give it a trailing slash). Images are read with
    OpenCV (BGR, or grey with ``gray``), resized when both sizes are given, and stored raw, or encoded
    (``encoded`` keeps the file's own bytes when possible; ``encode_type`` re-encodes, and implies encoded).
    Unreadable images are skipped with a warning naming the list line, as Caffe does (``skip_missing=False``
    raises instead). Returns the number of records written.
    """
    _backend_lmdb(backend)
    lines = read_image_list(list_file)
    if shuffle:
        random.Random(seed).shuffle(lines)
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
    resize_height, resize_width = max(0, int(resize_height)), max(0, int(resize_width))
    is_color = not gray
    data_size = None
    skipped = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(lines), unit="img", desc=os.path.basename(os.fspath(db_name).rstrip("/")))
    with LMDBWriter(db_name) as w:
        for line_id, (name, label, lineno) in enumerate(lines):
            enc = encode_type
            if encoded and not enc:
                p = name.rfind(".")
                if p < 0:
                    log.warning("Failed to guess the encoding of '%s'", name)
                enc = name[p + 1:].lower()
            where = f"{os.fspath(list_file)}:{lineno}: "
            try:
                datum = read_image_to_datum(root_folder + name, label, resize_height, resize_width, is_color,
                                            enc, where)
            except DataError as e:
                if not skip_missing:
                    raise
                log.warning("%s; skipped", e)
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            if check_size:
                size = datum.channels * datum.height * datum.width
                if data_size is None:
                    data_size = size
                elif len(datum.data) != data_size:
                    raise DataError(f"{where}image '{root_folder + name}' gives {len(datum.data)} data bytes, "
                                    f"the first image gave {data_size} (--check_size); resize all images to one "
                                    "size with --resize_height/--resize_width")
            w.put(f"{line_id:08d}_{name}".encode("utf-8", "surrogateescape"), datum.SerializeToString())
            if bar is not None:
                bar.update(1)
            if w.count % 1000 == 0:
                log.info("Processed %d files.", w.count)
    if bar is not None:
        bar.close()
    if w.count % 1000 != 0:
        log.info("Processed %d files.", w.count)
    if skipped:
        log.warning("%d of %d images could not be read and were skipped", skipped, len(lines))
    return w.count


def compute_image_mean(db, output=None, backend: str = "lmdb", progress: bool = False):
    """Caffe's ``compute_image_mean``: the per-pixel mean over every Datum of ``db`` (encoded ones decoded),
    accumulated in float32 in key order exactly as Caffe does. Writes ``output`` as a BlobProto with legacy
    dims 1 x C x H x W (Caffe's layout) when given.

    Returns ``(mean, channel_means)``: the 1 x C x H x W float32 array and the per-channel means Caffe logs
    as ``mean_value channel [c]``."""
    _backend_lmdb(backend)
    reader = LMDBReader(db)
    total = None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(reader), unit="rec", desc="mean")
    count = 0
    shape = None
    for key, value in reader.items():
        arr = decode_datum(value, key)
        if total is None:
            shape = arr.shape
            total = np.zeros(arr.size, dtype=np.float32)
        elif arr.size != total.size:
            raise DataError(f"LMDB '{reader.path}' record '{key_str(key)}': {arr.size} values (shape "
                            f"{arr.shape}), the first record has {total.size} ({shape}); compute_image_mean "
                            "needs images of one size")
        total += arr.reshape(-1).astype(np.float32)  # float32 += per element, as Caffe's sum_blob
        count += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    reader.close()
    if count == 0:
        raise DataError(f"LMDB '{reader.path}' has no records")
    mean = (total / np.float32(count)).astype(np.float32).reshape((1,) + shape)
    c = shape[0]
    dim = shape[1] * shape[2]
    flat = mean.reshape(-1)
    channel_means = []
    for ch in range(c):
        acc = np.cumsum(flat[ch * dim:(ch + 1) * dim], dtype=np.float32)[-1]  # sequential, as Caffe's loop
        channel_means.append(float(acc / np.float32(dim)))
    if output is not None:
        _write_mean(output, mean)
    return mean, channel_means


def _write_mean(path, mean: np.ndarray):
    from ..formats.binary import write_blobproto
    write_blobproto(path, mean, legacy_dims=True)


def _main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m netspec.data.lmdb_io",
                                description="LMDB helpers for Caffe image databases")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("leveldb-to-lmdb", help="copy a Caffe LevelDB into a new LMDB (needs plyvel)")
    c.add_argument("src")
    c.add_argument("dst")
    i = sub.add_parser("info", help="number of records and the first record's shape and label")
    i.add_argument("db")
    a = p.parse_args(argv)
    try:
        if a.cmd == "leveldb-to-lmdb":
            n = leveldb_to_lmdb(a.src, a.dst)
            print(f"copied {n} records into {a.dst}")
        else:
            r = LMDBReader(a.db)
            key, value = r.first()
            d = parse_datum(value, key)
            arr = decode_datum(d, key)
            print(f"{a.db}: {len(r)} records; first '{key_str(key)}': shape {arr.shape} {arr.dtype}, "
                  f"label {d.label}, {'encoded' if d.encoded else 'raw'}")
    except DataError as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    _main()
