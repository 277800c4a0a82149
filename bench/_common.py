"""Helpers the benchmark scripts share (imported as a sibling module: bench/ is on sys.path when they run)."""


def same_bytes(a: str, b: str) -> bool:
    """Whether two files hold the same bytes, read in 16 MiB pieces."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True
