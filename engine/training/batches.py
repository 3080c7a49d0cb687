"""Where a run's batches come from: tensors in memory, or a DataLoader over the user's Dataset.

Both give an epoch's batches from a position inside it (`epoch(e, skip)`), so a resumed run
continues an epoch exactly where its checkpoint left it:

- **in memory** (`MemoryBatches`): the epoch's order is a permutation drawn from the run's data
  order generator (its state at the epoch's start is in every checkpoint); indexing on the device.
- **DataLoader** (`LoaderBatches`): a map-style set is read in the order of `EpochSampler`, a
  permutation drawn from a generator seeded from (seed, epoch) alone, starting after the
  batches already done: a resume mid-epoch draws the same order and skips the done batches in
  the sampler (nothing is read for them). In worker processes each batch is read with torch,
  `random` and NumPy seeded from (seed, epoch, the index of its first item) (`SeededItems`), so
  its randomness does not depend on which worker read it, nor on what that worker read before. With `num_workers` 0 the
  items draw from the main process's generators, which every checkpoint holds. An iterable set
  has no sampler: each worker is seeded from (seed, epoch, worker id); a resume mid-epoch loads
  the set's own `state_dict()` when it has one (`num_workers` 0), else it reads and drops the
  epoch's first batches again (exact when the set's order depends only on those seeds).
"""

from __future__ import annotations

import os
import random
from typing import Any, Iterator

_MASK = (1 << 63) - 1


def mix(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps): nearby inputs give unrelated seeds."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


def seed_all(seed: int) -> None:
    """torch's CPU generator, Python's and NumPy's. (The CPU generator directly: torch.manual_seed
    also visits every accelerator backend, ~0.3 ms, too slow to pay per item.)"""
    import torch

    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def default_workers() -> int:
    """min(4, cores - 1): the training process keeps one core (0 on a one-core machine)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, n - 1))


def to_device(batch: Any, device, non_blocking: bool = False) -> Any:
    """Move tensors inside tuples, lists and dicts (recursively) to `device`."""
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        moved = [to_device(v, device, non_blocking) for v in batch]
        return tuple(moved) if isinstance(batch, tuple) else moved
    if hasattr(batch, "to") and hasattr(batch, "keys"):  # a Hugging Face BatchEncoding
        return batch.to(device)
    return batch


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the first axis of its first tensor (1 if none)."""
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)):
        for v in batch:
            n = batch_size_of(v)
            if n:
                return n
    return 0


class MemoryBatches:
    """Batches of tensors held on the device (TensorData), in the order of the run's generator."""

    kind = "in-memory"

    def __init__(self, data, batch_size: int, order_gen, device, *, rank: int = 0, world: int = 1):
        self.x, self.y = data.x_train, data.y_train
        self.total = len(self.x)
        # Several processes: each rank's share of the epoch's permutation, DistributedSampler's way
        # (padded with its first items to a multiple of the world, then every world-th from rank).
        self.rank, self.world = rank, world
        self.n = -(-self.total // world)
        self.batch_size = batch_size
        self.order_gen = order_gen
        self.device = device

    def batches_per_epoch(self) -> int | None:
        return -(-self.n // self.batch_size)

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        import torch

        x, y, bs = self.x, self.y, self.batch_size
        perm = torch.randperm(self.total, generator=self.order_gen)  # the same on every rank
        if self.world > 1:
            pad = self.n * self.world - self.total
            if pad:
                perm = torch.cat([perm, perm[:pad]])
            perm = perm[self.rank::self.world]
        perm = perm.to(self.device)
        for i in range(skip * bs, self.n, bs):
            idx = perm[i : i + bs]
            yield x[idx], y[idx]


class EpochSampler:
    """Indices 0..n-1 in a permutation drawn from (seed, epoch), from position `start` on."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self.epoch, self.start = 1, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(mix(self.seed, self.epoch, 0x5A4D))
        return iter(torch.randperm(self.n, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, self.n - self.start)


def shard_sampler(n: int, seed: int, rank: int, world: int):
    """EpochSampler's part for several processes: torch's DistributedSampler (each rank's share
    of a permutation drawn from (seed, epoch), set_epoch each epoch), from position `start` on."""
    from torch.utils.data import DistributedSampler

    class ShardSampler(DistributedSampler):
        def __init__(self):
            super().__init__(range(n), num_replicas=world, rank=rank, shuffle=True,
                             seed=mix(seed, 0x5A4D) & 0x7FFFFFFF, drop_last=False)
            self.start = 0

        def set_epoch(self, epoch: int, start: int = 0) -> None:
            super().set_epoch(epoch)
            self.start = start

        def __iter__(self):
            return iter(list(super().__iter__())[self.start:])

        def __len__(self) -> int:
            return max(0, self.num_samples - self.start)

    return ShardSampler()


class SeededItems:
    """A map-style dataset whose items, read in a worker process, are read with every generator
    seeded from (seed, epoch, index). In the main process (no workers) items draw from the main
    generators, which checkpoints hold; reseeding them there would tie the model's own randomness
    (dropout) to the data."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:
            seed_all(mix(self.seed, self.epoch, int(i)))
        return self.dataset[i]

    def __getitems__(self, indices):
        """A whole batch (what a DataLoader asks for): seeded once from (seed, epoch, the batch's
        first index), which names the batch within the epoch's permutation, then its items in
        order. Seeding per item cost ~20 us an item (NumPy's seed alone 14 us), a fifth of a
        small image's reading time; per batch it is nothing, and as exact on resume (a resume
        skips whole batches)."""
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None and len(indices):
            seed_all(mix(self.seed, self.epoch, int(indices[0])))
        own = getattr(self.dataset, "__getitems__", None)
        if own is not None:
            return own(indices)
        return [self.dataset[i] for i in indices]


class _WorkerInit:
    """Seeds each worker process from (seed, epoch, worker id); picklable for spawn."""

    def __init__(self, seed: int, epoch: int, user=None):
        self.seed, self.epoch, self.user = seed, epoch, user

    def __call__(self, worker_id: int) -> None:
        import torch

        seed_all(mix(self.seed, self.epoch, worker_id, 0x3011))
        torch.set_num_threads(1)  # each worker one thread: workers times threads never oversubscribe
        if self.user is not None:
            self.user(worker_id)


class LoaderBatches:
    """Batches read by a torch DataLoader from the user's Dataset (see the module docstring)."""

    kind = "dataloader"

    def __init__(self, dataset, *, iterable: bool, batch_size: int, seed: int, device, num_workers: int | None,
                 collate=None, drop_last: bool = False, shuffle: bool = True, rank: int = 0, world: int = 1):
        import torch

        self.iterable = iterable
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.num_workers = default_workers() if num_workers is None else num_workers
        self.collate = collate
        self.pin = device.type == "cuda"
        self.non_blocking = self.pin
        self.shuffle = shuffle and not iterable
        self.dataset = dataset if iterable else SeededItems(dataset, seed)
        self.world = world
        self.sampler = None if iterable else (EpochSampler(len(dataset), seed) if world == 1 else
                                              shard_sampler(len(dataset), seed, rank, world))
        self._torch = torch

    def batches_per_epoch(self) -> int | None:
        if self.iterable:
            try:
                return -(-len(self.dataset) // self.batch_size)
            except TypeError:
                return None
        return -(-(-(-len(self.dataset) // self.world)) // self.batch_size)

    def loader(self, epoch: int, start: int):
        from torch.utils.data import DataLoader

        torch = self._torch
        sampler = None
        if self.sampler is not None:
            if self.shuffle:
                self.sampler.set_epoch(epoch, start)
                sampler = self.sampler
            else:
                sampler = range(start, len(self.dataset))
            self.dataset.epoch = epoch
        kw: dict[str, Any] = {}
        if self.num_workers:
            kw = dict(worker_init_fn=_WorkerInit(self.seed, epoch), prefetch_factor=4)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate, pin_memory=self.pin, drop_last=False,
                          generator=torch.Generator().manual_seed(mix(self.seed, epoch, 0xB45E)), **kw)

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        """The epoch's batches on the device, after `skip` batches (map-style: not read; iterable:
        read and dropped unless `restore_iterable` has set the set's own position)."""
        start = skip * self.batch_size if self.sampler is not None else 0
        it = iter(self.loader(epoch, start))
        try:
            if self.sampler is None:
                for _ in range(skip):
                    next(it)
            device, nb = self.device, self.non_blocking
            for batch in it:
                yield to_device(batch, device, nb)
        except StopIteration:
            return
        except RuntimeError as e:
            text = str(e)
            if "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text):
                from torchdeck.errors import OperationFailed

                raise OperationFailed(f"a DataLoader worker process died ({text.splitlines()[0]}); out of memory? "
                                     "try fewer --num-workers or a smaller batch") from e
            raise
        finally:
            del it  # shuts the workers down now, not at the next garbage collection
