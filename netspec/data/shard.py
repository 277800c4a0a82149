"""Data parallelism: which part of a TRAIN data stream this process reads.

Every process of a multi-GPU run plans the same stream of items (records in key order, list lines, a seeded
random order); item k of it goes to rank ``k mod world``, as Caffe's DataLayer deals the records of one LMDB
to its solvers (``DataLayer::Skip``: keep a record when ``offset % solver_count == solver_rank``). So one
iteration of N processes reads N different batches, and their averaged gradient is Caffe's multi-GPU step.
Random augmentation draws from a generator keyed by the rank too, so the processes' crops and flips differ.

Outside ``torch.distributed`` (or in the TEST phase, which only the root process scores) the shard is
everything: rank 0 of 1.
"""
from dataclasses import dataclass
from typing import Callable, List


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, train: bool) -> "Shard":
        """This process's shard of a TRAIN stream under an initialized process group; else the whole."""
        if not train:
            return cls()
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def take(self, advance: Callable[[], object], offset: int, n: int):
        """The next ``n`` items of this shard: ``advance()`` yields the shared stream's next item and ``offset``
        counts the items of the stream read so far. Returns (items, new offset)."""
        items: List[object] = []
        while len(items) < n:
            item = advance()
            if offset % self.world == self.rank:
                items.append(item)
            offset += 1
        return items, offset

    def rng_key(self, seed: int, index: int) -> list:
        """Seed material of batch ``index``'s augmentation generator: [seed, index] in one process (and on rank
        0), with the rank appended on the others."""
        return [int(seed), int(index)] + ([self.rank] if self.rank else [])
