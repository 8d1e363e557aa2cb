"""Weighted, deterministic, resumable mixing of several DataLoaders.

The batch order of an epoch is a pure function of ``(seed, epoch, weights, loader lengths)``:

* each DataLoader samples through a :class:`ShardedEpochSampler`, whose order is a pure function of
  ``(seed, epoch, rank, world_size)``;
* :class:`MetaDataLoader` picks the loader of each step from a stream of uniforms drawn from its own
  ``torch.Generator`` seeded from ``(seed, epoch)``; the uniform stream does not depend on the weights, so
  ``set_weights`` mid-epoch changes only the mapping from the next uniform to a loader.

A position is therefore a handful of integers (epoch, batches consumed per loader, generator state), and
resuming jumps to it by index: every sampler is told to ``skip`` what was consumed, so no skipped sample is
read, unlike trainers that replay and discard the first batches.

Zero weights: a loader whose weight is 0 is never drawn and is treated as exhausted, so an epoch ends once
every positive-weight loader is exhausted; the zero-weight loader's batches are simply not part of that
epoch (and ``len()`` does not count them). Raising its weight later in the epoch makes its remaining batches
drawable again.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from a2b_pipeline.data.splits import SPLITS

__all__ = ["MetaDataLoader", "ShardedEpochSampler", "derive_seed"]

_STATE_FORMAT = 1
_STATE_KEYS = frozenset(
    {
        "format",
        "split",
        "seed",
        "epoch",
        "consumed",
        "weights",
        "generator_state",
        "draw_block",
        "draw_offset",
    }
)
# Uniforms are drawn in blocks: one torch call per block instead of one per batch keeps the per-draw cost to
# a list index and a bisect (the benchmark compares against plain DataLoaders). A position is (state at the
# block's start, draws used). A block is drawn in chunks into a reused buffer: the same values as one draw
# of the block (uniform_ on CPU takes one generator step per value, in order), but a short epoch pays for
# one small draw instead of 1024 uniforms.
_DRAW_BLOCK = 1024
_DRAW_CHUNK = 64


def derive_seed(tag: str, *parts: int) -> int:
    """A 63-bit seed from a tag and integers; a hash, so nearby (seed, epoch) pairs give unrelated streams
    and the sampler's and the mixer's generators never share a seed even when built from the same run seed."""
    data = ":".join([tag, *map(str, map(int, parts))]).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


class ShardedEpochSampler(Sampler[int]):
    """This rank's share of one epoch's order of ``range(n)``.

    The epoch order is a permutation drawn from a generator seeded by ``(seed, epoch)`` (or ``arange`` when
    not shuffling), identical on every rank; it is padded by wrap-around to a multiple of ``world_size`` so
    every rank yields exactly ``ceil(n / world_size)`` indices, and rank ``r`` takes ``order[r::world_size]``.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ShardedEpochSampler: n must be a non-negative int, got {n!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"ShardedEpochSampler: world_size must be an int >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"ShardedEpochSampler: rank must be in [0, {world_size}), got {rank!r}")
        self.n = n
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0

    def __len__(self) -> int:
        # Constant (skip does not change it): DataLoader derives len() from it, and MetaDataLoader relies on
        # len(dataloader) being the full epoch's batch count.
        return -(-self.n // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, n_samples: int) -> None:
        """The next ``__iter__`` (only) starts after ``n_samples`` of this rank's order for the epoch."""
        if not 0 <= n_samples <= len(self):
            raise ValueError(
                f"ShardedEpochSampler.skip: n_samples must be in [0, {len(self)}], got {n_samples}"
            )
        self._skip = int(n_samples)

    def epoch_indices(self) -> list[int]:
        """This rank's full order for the current epoch (ignores a pending skip)."""
        per_rank = len(self)
        if per_rank == 0:
            return []
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed("sampler", self.seed, self.epoch))
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        total = per_rank * self.world_size
        if total > self.n:
            # repeat() handles n < world_size - 1, where one wrap-around is not enough.
            order = order.repeat(-(-total // self.n))[:total]
        return order[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        # Computed eagerly (not a generator function) so the pending skip is consumed by this call.
        skip, self._skip = self._skip, 0
        return iter(self.epoch_indices()[skip:])


def _sampler_and_batch_size(dl: DataLoader) -> tuple[Any, int]:
    """The per-sample sampler of a DataLoader and how many of its indices make one batch."""
    batch_sampler = dl.batch_sampler
    if batch_sampler is None:  # batch_size=None: every "batch" is one sample
        return dl.sampler, 1
    sampler = getattr(batch_sampler, "sampler", None)
    batch_size = getattr(batch_sampler, "batch_size", None)
    if sampler is None or not isinstance(batch_size, int):
        return None, 0
    return sampler, batch_size


def _require_resumable(i: int, sampler: Any) -> None:
    if not (callable(getattr(sampler, "skip", None)) and callable(getattr(sampler, "set_epoch", None))):
        raise TypeError(
            f"resume needs ShardedEpochSampler: dataloaders[{i}] samples with {type(sampler).__name__}, "
            "which has no skip()/set_epoch()"
        )


def _validate_weights(weights: Sequence[float], n_loaders: int) -> list[float]:
    try:
        values = list(weights)
    except TypeError:
        raise ValueError(f"sampling_weights must be a sequence of numbers, got {weights!r}") from None
    if len(values) != n_loaders:
        raise ValueError(f"sampling_weights has {len(values)} entries for {n_loaders} dataloaders")
    out: list[float] = []
    for i, w in enumerate(values):
        try:
            f = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"sampling_weights[{i}] is not a number ({w!r})") from None
        if math.isnan(f):
            raise ValueError(f"sampling_weights[{i}] is NaN")
        if math.isinf(f):
            raise ValueError(f"sampling_weights[{i}] is infinite ({f})")
        if f < 0:
            raise ValueError(f"sampling_weights[{i}] is negative ({f})")
        out.append(f)
    if not any(out):
        raise ValueError(f"sampling_weights are all zero ({out}): at least one must be positive")
    return out


class MetaDataLoader:
    """Mixes ``dataloaders``: each step draws loader ``i`` with probability proportional to
    ``sampling_weights[i]`` among the loaders not yet exhausted and yields its next ``(x, y)`` batch.

    The object is a cursor: ``__iter__`` always starts at the position ``state_dict()`` describes (the start
    of ``epoch`` unless batches were consumed or a state was loaded) and runs to the end of that epoch,
    after which the position moves to the start of the next epoch. Only one iterator is live at a time:
    a new ``__iter__``, ``set_epoch`` to another epoch or ``load_state_dict`` invalidates the previous one.

    Resume needs every DataLoader to sample through a :class:`ShardedEpochSampler` (possibly wrapped in the
    DataLoader's own ``BatchSampler``). Each DataLoader's own ``generator``, when it has one, is reseeded
    from ``(seed, loader index, epoch)`` right before ``iter()``, so worker base seeds (and the global RNG,
    which is then untouched) are the same in an interrupted and an uninterrupted run.

    ``dataset_names`` / ``dataset_indices`` (keyword-only) say what each loader reads: names for logs and
    per-dataset counts, and positions in the run config's dataset list (by default "0", "1", ... / 0, 1, ...).
    """

    def __init__(
        self,
        dataloaders: Sequence[DataLoader],
        split: str,
        sampling_weights: Sequence[float],
        seed: int = 0,
        *,
        dataset_names: Sequence[str] | None = None,
        dataset_indices: Sequence[int] | None = None,
    ) -> None:
        loaders = list(dataloaders)
        if not loaders:
            raise ValueError("MetaDataLoader needs at least one dataloader, got an empty list")
        for i, dl in enumerate(loaders):
            if not isinstance(dl, DataLoader):
                raise TypeError(f"dataloaders[{i}] is a {type(dl).__name__}, not a torch DataLoader")
        self.dataloaders: list[DataLoader] = loaders
        # What each loader reads, for logs and per-dataset counts: a name, and the dataset's position in the
        # config (a dataset without windows in a split has no loader); by default 0, 1, ...
        self.dataset_names = (
            [str(i) for i in range(len(loaders))] if dataset_names is None else list(dataset_names)
        )
        self.dataset_indices = list(range(len(loaders))) if dataset_indices is None else list(dataset_indices)
        for what, given in (("dataset_names", self.dataset_names), ("dataset_indices", self.dataset_indices)):
            if len(given) != len(loaders):
                raise ValueError(f"{what} has {len(given)} entries for {len(loaders)} dataloaders")
        # A DataLoader's sampler and batch size cannot be reassigned after construction: look them up once.
        self._samplers = [_sampler_and_batch_size(dl) for dl in loaders]
        if split not in SPLITS:
            raise ValueError(f"MetaDataLoader: split must be one of {SPLITS}, got {split!r}")
        self.split = str(split)
        self.seed = int(seed)
        self._weights = _validate_weights(sampling_weights, len(loaders))
        self.last_loader: int | None = None
        self._gen = torch.Generator()
        self._chunk = torch.empty(_DRAW_CHUNK, dtype=torch.float64)
        self._iteration = 0  # token of the live iterator; bumping it invalidates older ones
        self._lengths: list[int] | None = None  # len(dl) per loader, fixed while an epoch runs
        self._avail: list[float] = []
        self._cum: list[float] = []
        self._total = 0.0
        self._reset_position(0)

    # ----------------------------------------------------------------- position
    def _reset_position(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._consumed = [0] * len(self.dataloaders)
        # Generator state before the current block; None: the epoch's seed, which only __iter__ and
        # state_dict() need (seeding and reading a state here cost time on every short epoch).
        self._block_state: torch.Tensor | None = None
        self._block_len = _DRAW_BLOCK
        self._cursor = 0  # draws already used from the current block

    @property
    def weights(self) -> list[float]:
        return list(self._weights)

    @property
    def consumed(self) -> list[int]:
        """Batches yielded this epoch, per loader."""
        return list(self._consumed)

    def __len__(self) -> int:
        """Batches in a full epoch under the current weights (zero-weight loaders are not drawn)."""
        return sum(len(dl) for dl, w in zip(self.dataloaders, self._weights, strict=True) if w > 0)

    def set_epoch(self, epoch: int) -> None:
        """Position at the start of ``epoch``; a no-op when already in ``epoch``, so that
        ``load_state_dict(sd); set_epoch(sd["epoch"])`` keeps the loaded mid-epoch position."""
        if int(epoch) != self.epoch:
            self._iteration += 1
            self._reset_position(epoch)

    def set_weights(self, weights: Sequence[float]) -> None:
        """Takes effect at the next draw, also in the middle of an epoch."""
        self._weights = _validate_weights(weights, len(self.dataloaders))
        self._rebuild_cdf()

    def _rebuild_cdf(self) -> None:
        """Cumulative weights of the drawable loaders (positive weight, not exhausted this epoch)."""
        avail = self._weights
        if self._lengths is not None:  # outside an epoch run, lengths are unknown: all count as drawable
            left = zip(avail, self._consumed, self._lengths, strict=True)
            avail = [w if c < n else 0.0 for w, c, n in left]
        self._avail = avail
        self._cum = list(accumulate(avail))
        self._total = self._cum[-1]

    def _seek_block(self, gen: torch.Generator) -> torch.Generator:
        """``gen`` set to the state at the start of the current block."""
        if self._block_state is None:
            return gen.manual_seed(derive_seed("meta", self.seed, self.epoch))
        return gen.set_state(self._block_state)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _STATE_FORMAT,
            "split": self.split,
            "seed": self.seed,
            "epoch": self.epoch,
            "consumed": list(self._consumed),
            "weights": list(self._weights),
            "generator_state": self._seek_block(torch.Generator()).get_state().tolist(),
            "draw_block": self._block_len,
            "draw_offset": self._cursor,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """The next ``__iter__`` resumes exactly at ``sd``'s position without reading the skipped batches."""
        bad = "MetaDataLoader.load_state_dict:"
        missing = sorted(_STATE_KEYS - sd.keys())
        if missing:
            raise ValueError(f"{bad} state lacks {missing}")
        if sd.get("format") != _STATE_FORMAT:
            raise ValueError(f"{bad} state format {sd.get('format')!r}, expected {_STATE_FORMAT}")
        if sd["split"] != self.split:
            raise ValueError(f"{bad} state is for split {sd['split']!r}, this loader is {self.split!r}")
        if int(sd["seed"]) != self.seed:
            raise ValueError(f"{bad} state was saved with seed {sd['seed']}, this loader has {self.seed}")
        consumed = [int(c) for c in sd["consumed"]]
        n = len(self.dataloaders)
        if len(consumed) != n:
            raise ValueError(f"{bad} state has positions for {len(consumed)} loaders, this one has {n}")
        for i, (c, dl) in enumerate(zip(consumed, self.dataloaders, strict=True)):
            if not 0 <= c <= len(dl):
                raise ValueError(f"{bad} state has {c} batches consumed for loader {i} of {len(dl)} batches")
            _require_resumable(i, self._samplers[i][0])
        weights = _validate_weights(sd["weights"], n)
        block_len, cursor = int(sd["draw_block"]), int(sd["draw_offset"])
        if not 0 <= cursor <= block_len:
            raise ValueError(f"{bad} draw_offset {cursor} is outside its block of {block_len}")
        try:
            block_state = torch.tensor(sd["generator_state"], dtype=torch.uint8)
            torch.Generator().set_state(block_state)  # fail here, not at the next __iter__
        except (RuntimeError, TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{bad} generator_state is not a CPU torch.Generator state ({e})") from None
        self._iteration += 1
        self.epoch = int(sd["epoch"])
        self._consumed = consumed
        self._weights = weights
        self._block_state = block_state
        self._block_len = block_len
        self._cursor = cursor

    # ---------------------------------------------------------------- iteration
    def _open(self, i: int) -> Iterator[Any]:
        """iter() of loader i positioned after the batches it already gave this epoch."""
        dl = self.dataloaders[i]
        sampler, batch_size = self._samplers[i]
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        done = self._consumed[i]
        if done:
            _require_resumable(i, sampler)
            # Consumed batches are full batches (only the epoch's last one may be short), so this is exact.
            sampler.skip(done * batch_size)
        if dl.generator is not None:
            dl.generator.manual_seed(derive_seed("loader", self.seed, i, self.epoch))
        return iter(dl)

    def _draw_more(self, block: list[float]) -> list[float]:
        """``block`` (the current block's uniforms drawn so far; ``self._gen`` sits right after them) extended
        by one chunk, or the next block's first chunk once the current one is used up."""
        if len(block) >= self._block_len:
            self._block_state = self._gen.get_state()
            self._block_len = _DRAW_BLOCK
            self._cursor = 0
            block = []
        n = self._block_len - len(block)
        buf = self._chunk if n >= _DRAW_CHUNK else self._chunk[:n]  # a loaded block may end mid-chunk
        block += buf.uniform_(generator=self._gen).tolist()
        return block

    def __iter__(self) -> Iterator[Any]:
        self._iteration += 1
        return self._run(self._iteration)

    def _run(self, token: int) -> Iterator[Any]:
        n_loaders = len(self.dataloaders)
        lengths = [len(dl) for dl in self.dataloaders]
        self._lengths = lengths
        consumed = self._consumed
        self._rebuild_cdf()
        iters: list[Iterator[Any] | None] = [None] * n_loaders
        # Open drawable loaders up front so their workers start prefetching now; others open on first draw.
        for i in range(n_loaders):
            if self._weights[i] > 0 and consumed[i] < lengths[i]:
                iters[i] = self._open(i)
        # The position is (block start state, offset): re-draw the block from its start, chunk by chunk.
        self._seek_block(self._gen)
        block: list[float] = []
        n_block = 0
        try:
            while True:
                if self._iteration != token:
                    raise RuntimeError(
                        "this MetaDataLoader iterator was superseded (new iter, set_epoch or load)"
                    )
                total = self._total
                if total <= 0.0:  # every drawable loader is exhausted: the epoch is over
                    break
                c = self._cursor
                while c >= n_block:  # more than once when resuming mid-block
                    block = self._draw_more(block)
                    n_block, c = len(block), self._cursor
                self._cursor = c + 1
                # Inverse CDF; u < 1 so u * total < total and zero-weight entries have empty intervals.
                i = bisect_right(self._cum, block[c] * total)
                if i >= n_loaders:  # float safety net, unreachable in practice
                    i = max((j for j, w in enumerate(self._avail) if w > 0), default=0)
                it = iters[i]
                if it is None:
                    it = iters[i] = self._open(i)
                try:
                    batch = next(it)
                except StopIteration:
                    raise RuntimeError(
                        f"dataloaders[{i}] ended after {consumed[i]} batches but len() is {lengths[i]}; "
                        "its dataset or sampler changed length during the epoch"
                    ) from None
                consumed[i] += 1
                if consumed[i] >= lengths[i]:
                    iters[i] = None  # release its workers now
                    self._rebuild_cdf()
                self.last_loader = i
                yield batch
            self._reset_position(self.epoch + 1)
        finally:
            if self._iteration == token:  # a superseded iterator must not touch the live one's state
                self._lengths = None
