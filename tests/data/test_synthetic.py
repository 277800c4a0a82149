"""The synthetic demo set (netspec.data.synthetic): packing it from several processes at once."""
import os

from netspec.data.lmdb_io import LMDBReader
from netspec.data.synthetic import pack


def test_concurrent_packs_of_the_demo_data_agree(tmp_path):
    # the ranks of a torchrun all find data/demo missing and pack it at once: one packs, the others wait
    # (the collision it prevents is a matter of milliseconds; this checks the outcome, not the timing)
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (f"import sys; sys.path.insert(0, {repo!r}); from netspec.data.synthetic import pack; "
            f"pack({str(tmp_path / 'demo')!r}, n_train=60, n_val=4, size=32)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    pack(str(tmp_path / "ref"), n_train=60, n_val=4, size=32)
    for split in ("train", "val"):
        for what in ("images", "labels"):
            a, b = LMDBReader(str(tmp_path / "demo" / split / what)), LMDBReader(str(tmp_path / "ref" / split / what))
            assert len(a) == len(b) == (60 if split == "train" else 4)
            assert all(a[i] == b[i] for i in range(len(a)))

