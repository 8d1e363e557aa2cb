"""MetaDataLoader and ShardedEpochSampler over real torch DataLoaders (CPU, small TensorDatasets)."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, get_worker_info

from a2b_pipeline.data.meta_dataloader import MetaDataLoader, ShardedEpochSampler

ID_STRIDE = 100_000  # sample id = loader index * ID_STRIDE + row, so a batch names its loader and rows

Key = tuple[int, tuple[int, ...]]


def ids_of(loader_index: int, n: int) -> torch.Tensor:
    return loader_index * ID_STRIDE + torch.arange(n)


class CountingDataset(Dataset):
    """Counts __getitem__ calls (in this process: use with num_workers=0)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids
        self.reads = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.ids[j : j + 1], self.ids[j : j + 1] * 2


class WorkerSeedDataset(Dataset):
    """y carries the worker base seed, so a test sees whether resumed workers were seeded as before."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        info = get_worker_info()
        base = -1 if info is None else info.seed - info.id
        return self.ids[j : j + 1], torch.tensor([base])


def tensor_dataset(ids: torch.Tensor) -> Dataset:
    return TensorDataset(ids.unsqueeze(1), ids.unsqueeze(1) * 2)


def build(
    sizes: Sequence[int],
    weights: Sequence[float],
    *,
    seed: int = 0,
    batch_size: int = 4,
    num_workers: int = 0,
    make_dataset: Callable[[torch.Tensor], Dataset] = tensor_dataset,
) -> MetaDataLoader:
    """From scratch, as a resumed process would: new datasets, samplers, generators and loaders."""
    loaders = [
        DataLoader(
            make_dataset(ids_of(i, n)),
            batch_size=batch_size,
            sampler=ShardedEpochSampler(n, shuffle=True, seed=seed),
            num_workers=num_workers,
            generator=torch.Generator(),
        )
        for i, n in enumerate(sizes)
    ]
    return MetaDataLoader(loaders, "train", weights, seed=seed)


def key(batch: tuple[torch.Tensor, torch.Tensor]) -> Key:
    ids = [int(v) for v in batch[0].flatten()]
    return ids[0] // ID_STRIDE, tuple(ids)


def take(meta: MetaDataLoader, n: int | None = None) -> list[Key]:
    """Up to n batches of the current epoch (all of it when n is None)."""
    out: list[Key] = []
    if n == 0:
        return out
    for batch in meta:
        out.append(key(batch))
        assert meta.last_loader == out[-1][0]
        if n is not None and len(out) == n:
            break
    return out


# --------------------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shares_follow_weights(seed: int) -> None:
    weights = [0.5, 0.3, 0.2]
    n_draws = 3000  # every loader has 3000 batches: no exhaustion within the window
    meta = build([3000] * 3, weights, seed=seed, batch_size=1)
    counts = Counter(loader for loader, _ in take(meta, n_draws))
    chi2 = sum((counts[i] - n_draws * w) ** 2 / (n_draws * w) for i, w in enumerate(weights))
    assert chi2 < 13.8, (counts, chi2)  # chi-square, 2 degrees of freedom, p = 0.001


def test_two_loader_share_within_binomial_tolerance() -> None:
    n_draws = 4000
    meta = build([5000, 5000], [0.7, 0.3], seed=7, batch_size=1)
    first = sum(1 for loader, _ in take(meta, n_draws) if loader == 0)
    std = math.sqrt(n_draws * 0.7 * 0.3)
    assert abs(first - 0.7 * n_draws) < 4 * std, first


def test_epoch_yields_every_batch_once_and_skips_exhausted() -> None:
    sizes, bs = [37, 5, 101], 4
    meta = build(sizes, [1.0, 5.0, 1.0], batch_size=bs)
    assert len(meta) == sum(math.ceil(n / bs) for n in sizes)
    for epoch in range(2):
        assert meta.epoch == epoch
        order = take(meta)
        assert len(order) == len(meta)
        for i, n in enumerate(sizes):
            rows = [r for loader, ids in order if loader == i for r in ids]
            assert sorted(rows) == ids_of(i, n).tolist()  # every sample of every loader exactly once
        # The heavily weighted small loader runs out early; the others carry on without it.
        last_small = max(j for j, (loader, _) in enumerate(order) if loader == 1)
        assert last_small < len(order) // 2
    assert meta.epoch == 2


def test_order_is_a_function_of_seed_and_epoch() -> None:
    sizes, w = [40, 60], [0.5, 0.5]
    a, b, c = build(sizes, w, seed=3), build(sizes, w, seed=3), build(sizes, w, seed=4)
    a0, b0, c0 = take(a), take(b), take(c)
    assert a0 == b0
    assert a0 != c0
    assert [k[0] for k in a0] != [k[0] for k in c0]  # the mixing itself differs, not only the samplers
    a1 = take(a)
    assert a1 != a0  # a new epoch, a new order
    b.set_epoch(1)  # no-op: b is already at epoch 1 after a full epoch
    assert take(b) == a1
    b.set_epoch(0)
    assert take(b) == a0


def test_zero_weight_loader_is_never_drawn_until_raised() -> None:
    meta = build([20, 20, 20], [1.0, 0.0, 1.0])
    assert len(meta) == 10
    order = take(meta)
    assert len(order) == 10 and {k[0] for k in order} == {0, 2}  # the epoch ends without loader 1
    got: list[Key] = []
    for batch in meta:  # epoch 1: loader 1 becomes drawable after the third batch
        got.append(key(batch))
        if len(got) == 3:
            meta.set_weights([1.0, 1.0, 1.0])
    assert 1 not in {k[0] for k in got[:3]}
    assert Counter(k[0] for k in got) == {0: 5, 1: 5, 2: 5}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([-0.5, 1.0], r"sampling_weights\[0\] is negative \(-0.5\)"),
        ([1.0, float("nan")], r"sampling_weights\[1\] is NaN"),
        ([float("inf"), 1.0], r"sampling_weights\[0\] is infinite"),
        ([0.0, 0.0], r"sampling_weights are all zero"),
        ([1.0], r"sampling_weights has 1 entries for 2 dataloaders"),
        ([1.0, 1.0, 1.0], r"sampling_weights has 3 entries for 2 dataloaders"),
        ([1.0, "x"], r"sampling_weights\[1\] is not a number"),
    ],
)
def test_bad_weights_are_named(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build([8, 8], weights)
    meta = build([8, 8], [1.0, 1.0])
    with pytest.raises(ValueError, match=message):
        meta.set_weights(weights)
    assert meta.weights == [1.0, 1.0]  # a rejected update leaves the weights alone


def test_no_dataloaders_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one dataloader"):
        MetaDataLoader([], "train", [])


def test_dataset_names_and_indices_are_constructor_fields() -> None:
    """The seed's three-argument form still works (names "0", "1", ...); names and config positions given
    as keywords are plain fields, checked against the number of loaders."""
    loaders = build([8, 4], [1.0, 1.0]).dataloaders
    plain = MetaDataLoader(loaders, "train", [1.0, 1.0])
    assert plain.dataset_names == ["0", "1"] and plain.dataset_indices == [0, 1]
    named = MetaDataLoader(
        loaders, "val", [1.0, 1.0], dataset_names=["synA", "pmemo"], dataset_indices=[0, 2]
    )
    assert named.dataset_names == ["synA", "pmemo"] and named.dataset_indices == [0, 2]
    # the fields change nothing drawn: the same batches in the same order
    assert [x[:, 0].tolist() for x, _ in named] == [x[:, 0].tolist() for x, _ in plain]
    with pytest.raises(ValueError, match="dataset_names has 1 entries for 2 dataloaders"):
        MetaDataLoader(loaders, "train", [1.0, 1.0], dataset_names=["synA"])
    with pytest.raises(ValueError, match="dataset_indices has 3 entries for 2 dataloaders"):
        MetaDataLoader(loaders, "train", [1.0, 1.0], dataset_indices=[0, 1, 2])


def test_set_weights_mid_epoch_changes_shares() -> None:
    meta = build([3000, 3000], [0.9, 0.1], batch_size=1)
    got: list[int] = []
    for batch in meta:
        got.append(key(batch)[0])
        if len(got) == 1000:
            meta.set_weights([0.1, 0.9])
        if len(got) == 2000:
            break
    assert got[:1000].count(0) > 850  # expected 900, std 9.5
    assert got[1000:].count(0) < 150  # expected 100


def test_superseded_iterator_raises() -> None:
    meta = build([16, 16], [1.0, 1.0])
    old = iter(meta)
    next(old)
    next(iter(meta))
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)


# --------------------------------------------------------------------------------------------- resume
def run_epochs(meta: MetaDataLoader, n_epochs: int) -> list[list[Key]]:
    return [take(meta) for _ in range(n_epochs)]


def resumed(sizes: Sequence[int], weights: Sequence[float], state: dict, **kw) -> MetaDataLoader:
    meta = build(sizes, weights, **kw)
    meta.load_state_dict(json.loads(json.dumps(state)))  # the state survives JSON as in a checkpoint
    return meta


@pytest.mark.parametrize("k", [0, 1, 13, 29, 30])
def test_resume_mid_epoch_matches_uninterrupted(k: int) -> None:
    sizes, w = [50, 30, 41], [0.5, 0.2, 0.3]  # 30 batches per epoch at batch size 4
    full = run_epochs(build(sizes, w, seed=5), 2)

    first = build(sizes, w, seed=5)
    head = take(first, k)
    assert head == full[0][:k]
    state = first.state_dict()
    assert state["epoch"] == 0 and sum(state["consumed"]) == k

    meta = resumed(sizes, [1.0, 1.0, 1.0], state, seed=5)  # weights come from the state
    rng_before = torch.get_rng_state()
    assert take(meta) == full[0][k:]
    assert take(meta) == full[1]  # the next epoch starts normally
    assert torch.equal(torch.get_rng_state(), rng_before)  # the data path leaves the global RNG alone


def test_resume_in_a_later_epoch_with_set_epoch_loop() -> None:
    sizes, w = [24, 40], [0.4, 0.6]
    full = run_epochs(build(sizes, w, seed=1), 3)

    first = build(sizes, w, seed=1)
    take(first)
    head = take(first, 7)
    assert head == full[1][:7]
    state = first.state_dict()

    meta = resumed(sizes, w, state, seed=1)
    rest: list[list[Key]] = []
    for epoch in range(state["epoch"], 3):  # a trainer's loop: set_epoch keeps the loaded position
        meta.set_epoch(epoch)
        rest.append(take(meta))
    assert rest == [full[1][7:], full[2]]


@pytest.mark.parametrize("stop_at", [150, 1024, 1100])  # the mixer draws its uniforms in blocks of 1024
def test_resume_after_set_weights_mid_epoch(stop_at: int) -> None:
    sizes, batch_size = [1200, 1200], 1

    def run(meta: MetaDataLoader, stop_at: int | None) -> list[Key]:
        out: list[Key] = []
        for batch in meta:
            out.append(key(batch))
            if len(out) == 100:
                meta.set_weights([0.2, 0.8])
            if len(out) == stop_at:
                break
        return out

    full = run(build(sizes, [0.8, 0.2], batch_size=batch_size), None)
    head = run(first := build(sizes, [0.8, 0.2], batch_size=batch_size), stop_at)
    meta = resumed(sizes, [0.8, 0.2], first.state_dict(), batch_size=batch_size)
    assert meta.weights == [0.2, 0.8]
    assert head + take(meta) == full


def test_resume_reads_no_skipped_data() -> None:
    sizes, bs, k = [64, 48], 4, 17
    datasets: list[CountingDataset] = []

    def counting(ids: torch.Tensor) -> Dataset:
        datasets.append(CountingDataset(ids))
        return datasets[-1]

    first = build(sizes, [1.0, 1.0], make_dataset=counting, batch_size=bs)
    full = take(build(sizes, [1.0, 1.0], batch_size=bs))
    take(first, k)
    state = first.state_dict()

    datasets.clear()
    meta = resumed(sizes, [1.0, 1.0], state, make_dataset=counting, batch_size=bs)
    it = iter(meta)
    assert [d.reads for d in datasets] == [0, 0]
    rest = [key(b) for b in it]
    assert rest == full[k:]
    assert [d.reads for d in datasets] == [sum(len(ids) for i_, ids in rest if i_ == i) for i in (0, 1)]
    assert sum(d.reads for d in datasets) == sum(sizes) - k * bs  # only the remaining samples were read


def test_resume_with_workers_keeps_order_and_worker_seeds() -> None:
    sizes, w, k = [40, 24], [0.6, 0.4], 7

    def run(meta: MetaDataLoader, n: int | None = None) -> list[tuple[Key, int]]:
        out = []
        for batch in meta:
            out.append((key(batch), int(batch[1][0, 0])))
            if len(out) == n:
                break
        return out

    kw = {"num_workers": 2, "make_dataset": WorkerSeedDataset, "seed": 9}
    meta = build(sizes, w, **kw)
    full = run(meta) + run(meta)
    first = build(sizes, w, **kw)
    head = run(first, k)
    meta = resumed(sizes, w, first.state_dict(), **kw)
    rest = run(meta) + run(meta)
    assert head + rest == full  # same batches and, per loader and epoch, the same worker base seeds
    assert len({s for _, s in full}) == 4  # 2 loaders x 2 epochs, each with its own base seed


def test_resume_needs_sharded_sampler() -> None:
    loaders = [DataLoader(tensor_dataset(ids_of(i, 16)), batch_size=4) for i in range(2)]
    meta = MetaDataLoader(loaders, "val", [1.0, 1.0])
    assert len(take(meta)) == 8  # plain samplers are fine without resume
    take(meta, 3)
    state = meta.state_dict()
    with pytest.raises(TypeError, match="resume needs ShardedEpochSampler"):
        MetaDataLoader(loaders, "val", [1.0, 1.0]).load_state_dict(state)


def test_state_dict_is_json_and_checked_on_load() -> None:
    meta = build([16, 16], [1.0, 1.0])
    take(meta, 3)
    state = meta.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert {"epoch", "consumed", "generator_state", "weights", "seed", "split"} <= state.keys()
    assert all(isinstance(v, int) for v in state["generator_state"])
    with pytest.raises(ValueError, match="seed"):
        build([16, 16], [1.0, 1.0], seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="loaders"):
        build([16, 16, 16], [1.0, 1.0, 1.0]).load_state_dict(state)
    with pytest.raises(ValueError, match="batches consumed"):
        build([16, 4], [1.0, 1.0]).load_state_dict({**state, "consumed": [1, 2]})
    with pytest.raises(ValueError, match="generator_state"):
        build([16, 16], [1.0, 1.0]).load_state_dict({**state, "generator_state": [1, 2, 3]})
    with pytest.raises(ValueError, match="lacks"):
        build([16, 16], [1.0, 1.0]).load_state_dict({k: v for k, v in state.items() if k != "epoch"})


def test_order_and_state_match_earlier_versions() -> None:
    """Checkpoints written by earlier versions must resume identically, so the draw order of a fixed setup
    and its state dicts (mid-epoch past one block of draws, and at the next epoch's start) are pinned."""

    def digest(x: object) -> str:
        return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]

    meta = build([1100, 500, 300], [0.6, 0.3, 0.1], seed=11, batch_size=1)
    order, states = [], []
    for batch in meta:
        order.append(key(batch)[0])
        if len(order) == 1030:
            states.append(meta.state_dict())
    states.append(meta.state_dict())
    mid = states[0]
    assert (mid["draw_block"], mid["draw_offset"], mid["consumed"]) == (1024, 6, [636, 286, 108])
    assert digest(order) == "3cf00bad9e64afa8"
    assert [digest(s) for s in states] == ["523494e254a68871", "0905265595fbd791"]


# ------------------------------------------------------------------------------------ sharded sampler
@pytest.mark.parametrize("n", [0, 1, 7, 12, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_sharded_sampler_ranks_cover_and_have_equal_lengths(n: int, world_size: int) -> None:
    shards = []
    for rank in range(world_size):
        sampler = ShardedEpochSampler(n, shuffle=True, seed=11, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler) == math.ceil(n / world_size)
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # covering
    padding = math.ceil(n / world_size) * world_size - n
    assert len(flat) - len(set(flat)) == padding  # disjoint except for the wrap-around padding
    if n >= padding:
        assert max(Counter(flat).values(), default=1) <= 2


def test_sharded_sampler_epochs_shuffle_and_skip() -> None:
    s = ShardedEpochSampler(20, shuffle=True, seed=0)
    e0 = list(s)
    assert sorted(e0) == list(range(20)) and e0 != list(range(20))
    assert list(s) == e0  # a pure function of (seed, epoch)
    s.set_epoch(1)
    assert list(s) != e0
    s.set_epoch(0)
    s.skip(6)
    assert list(s) == e0[6:]
    assert list(s) == e0  # skip applies to the next iteration only
    assert list(ShardedEpochSampler(5, shuffle=False, seed=3)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="n_samples"):
        s.skip(21)


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_sharded_sampler_rejects_bad_rank(rank: int, world_size: int) -> None:
    with pytest.raises(ValueError, match="rank|world_size"):
        ShardedEpochSampler(10, shuffle=False, seed=0, rank=rank, world_size=world_size)
