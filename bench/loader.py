"""MetaDataLoader overhead: the same batches through MetaDataLoader over 3 loaders and plain DataLoaders.

Both arms iterate the *same* three torch DataLoaders (num_workers=0, so every cost lands in this process):
  meta     one MetaDataLoader(loaders, weights 3:1:1), built before the clock starts, for a few epochs
  replay   plain iter() of each DataLoader, taking batches in the order the MetaDataLoader drew them
           (recorded beforehand): the same batches in the same order, the minimal cost of any mixing
  chain    plain DataLoaders one after the other: the same batches in another order, no mixing at all
Equality of the batches of meta and replay is checked before timing.

By attribution (resolves what the side-by-side ratios, noisy on a shared machine, cannot): in one run the time
spent inside the DataLoaders (iterator creation and __next__) is subtracted from the whole, leaving the
iterable's "own" time per batch. The same is done for the replay as a generator ("floor": what this
measurement charges the least possible mixer, timer calls included). The target's figure is
(own - floor) / (the replay's time per batch): how much longer a batch takes through the MetaDataLoader.

Scenarios:
  windows  the real thing: WindowDataset windows of three synthetic corpora from prepare_data, demo batch size
  tiny     a stress case: TensorDatasets of 8 floats, batch size 1, so the per-batch cost of the
           MetaDataLoader itself shows (its absolute overhead per batch is reported in microseconds)

    .venv/bin/python bench/loader.py [--quick] [--reps N]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _common as C
import torch
from torch.utils.data import DataLoader, TensorDataset

WEIGHTS = [3.0, 1.0, 1.0]


def three_corpora_loaders(args: Any) -> tuple[list[DataLoader], int]:
    from a2b_pipeline.data.pipeline import make_loader, prepare_data

    raw = C.bench_config_dict(args.data_dir, quick=args.quick, threads=args.threads)
    third = dict(raw["data"]["datasets"][1])
    third.update(name="synth_c", root=third["root"].replace("synth_b", "synth_c"))
    third["synthetic"] = {**third["synthetic"], "seed": 3}
    raw["data"]["datasets"].append(third)
    for ds, w in zip(raw["data"]["datasets"], WEIGHTS, strict=True):
        ds["weight"] = w
    from a2b_pipeline.configs import config_from_dict

    cfg = config_from_dict(raw, "bench")
    meta = make_loader(prepare_data(cfg), cfg, "train")
    assert len(meta.dataloaders) == 3, meta.dataset_names
    return list(meta.dataloaders), cfg.seed


def repeated(loaders: list[DataLoader], times: int) -> list[DataLoader]:
    """The same windows, each dataset repeated `times` times: epochs as long as a real corpus's."""
    from torch.utils.data import ConcatDataset

    from a2b_pipeline.data.meta_dataloader import ShardedEpochSampler

    out = []
    for i, dl in enumerate(loaders):
        ds = ConcatDataset([dl.dataset] * times)
        sampler = ShardedEpochSampler(len(ds), shuffle=True, seed=100 + i)
        out.append(DataLoader(ds, batch_size=dl.batch_size, sampler=sampler, generator=torch.Generator()))
    return out


def tiny_loaders(n: int) -> tuple[list[DataLoader], int]:
    from a2b_pipeline.data.meta_dataloader import ShardedEpochSampler

    out = []
    for i in range(3):
        ds = TensorDataset(torch.randn(n, 8), torch.randn(n, 1))
        sampler = ShardedEpochSampler(n, shuffle=True, seed=i)
        out.append(DataLoader(ds, batch_size=1, sampler=sampler, generator=torch.Generator()))
    return out, 0


def record(loaders: list[DataLoader], seed: int, epoch: int) -> tuple[list[int], list[Any]]:
    """The MetaDataLoader's draw order (loader index per batch) and batches for one epoch."""
    from a2b_pipeline.data.meta_dataloader import MetaDataLoader

    meta = MetaDataLoader(loaders, "train", WEIGHTS, seed=seed)
    meta.set_epoch(epoch)
    order, batches = [], []
    for b in meta:
        order.append(meta.last_loader)
        batches.append(b)
    return order, batches


def plain_iters(loaders: list[DataLoader], seed: int, epoch: int) -> list[Any]:
    """iter() of each loader positioned as MetaDataLoader positions it (sampler epoch, generator seed)."""
    from a2b_pipeline.data.meta_dataloader import derive_seed

    its = []
    for i, dl in enumerate(loaders):
        dl.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        dl.generator.manual_seed(derive_seed("loader", seed, i, epoch))  # type: ignore[union-attr]
        its.append(iter(dl))
    return its


def run_meta(meta: Any, epochs: int, stamps: list[float]) -> None:
    for _ in range(epochs):  # the cursor moves on to the next epoch by itself
        for _ in meta:
            stamps.append(time.perf_counter())


def run_replay(loaders: list[DataLoader], seed: int, orders: list[list[int]], stamps: list[float]) -> None:
    for epoch, order in enumerate(orders):
        its = plain_iters(loaders, seed, epoch)
        for i in order:
            batch = next(its[i])  # held until the next one, as a `for` loop holds it  # noqa: F841
            stamps.append(time.perf_counter())


def run_chain(loaders: list[DataLoader], seed: int, epochs: int, stamps: list[float]) -> None:
    for epoch in range(epochs):
        for it in plain_iters(loaders, seed, epoch):
            for _ in it:
                stamps.append(time.perf_counter())


class _TimedIter:
    """Wraps a DataLoader iterator and sums the time spent inside its __next__."""

    def __init__(self, it: Any, acc: list[float]) -> None:
        self.it, self.acc = it, acc

    def __iter__(self) -> _TimedIter:
        return self

    def __next__(self) -> Any:
        t = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.acc[0] += time.perf_counter() - t


def replayed(loaders: list[DataLoader], seed: int, orders: list[list[int]]) -> Any:
    """The least a mixer can be: a generator that yields the recorded order's batches from plain iterators."""
    for epoch, order in enumerate(orders):
        its = plain_iters(loaders, seed, epoch)
        for i in order:
            yield next(its[i])


def decompose(loaders: list[DataLoader], batches: Any) -> tuple[float, float]:
    """(own seconds per batch of the iterable `batches` yields, seconds per batch inside the DataLoaders),
    from one run: the time spent inside the DataLoaders (creating their iterators and their __next__) is
    subtracted from the whole. Sampler set_epoch and generator reseeding count as the iterable's own."""
    acc = [0.0]

    class Timed(DataLoader):
        def __iter__(self) -> Any:  # type: ignore[override]
            t = time.perf_counter()
            it = super().__iter__()  # creating the iterator is the DataLoader's cost too
            acc[0] += time.perf_counter() - t
            return _TimedIter(it, acc)

    classes = [dl.__class__ for dl in loaders]
    for dl in loaders:
        dl.__class__ = Timed
    try:
        stamps = [time.perf_counter()]
        for _ in batches:
            stamps.append(time.perf_counter())
    finally:
        for dl, cls in zip(loaders, classes, strict=True):
            dl.__class__ = cls
    n = len(stamps) - 1
    total = stamps[-1] - stamps[0]
    return (total - acc[0]) / n, acc[0] / n


def meta_epochs(meta: Any, epochs: int) -> Any:
    for _ in range(epochs):  # the cursor moves on to the next epoch by itself
        yield from meta


def scenario(loaders: list[DataLoader], seed: int, n_reps: int, epochs: int) -> dict[str, Any]:
    from a2b_pipeline.data.meta_dataloader import MetaDataLoader

    orders = []
    for e in range(epochs):
        order, batches = record(loaders, seed, e)
        orders.append(order)
        if e == 0:  # replay yields exactly the MetaDataLoader's batches
            its = plain_iters(loaders, seed, e)
            for i, b in zip(order, batches, strict=True):
                assert all(torch.equal(u, v) for u, v in zip(next(its[i]), b, strict=True))
        del batches
    arms = {
        "meta": lambda meta, st: run_meta(meta, epochs, st),
        "replay": lambda _, st: run_replay(loaders, seed, orders, st),
        "chain": lambda _, st: run_chain(loaders, seed, epochs, st),
    }
    series = {k: C.Series() for k in arms}
    own, inside, floor = [], [], []
    for rep in range(n_reps):
        for arm in C.rotate(list(arms), rep):
            meta = MetaDataLoader(loaders, "train", WEIGHTS, seed=seed)
            stamps: list[float] = []
            start = C.clocks()
            stamps.append(start[0])
            arms[arm](meta, stamps)
            series[arm].add(len(stamps) - 1, C.Span.since(start), median_batch_s=C.median_interval(stamps))
        meta = MetaDataLoader(loaders, "train", WEIGHTS, seed=seed)
        o, i = decompose(loaders, meta_epochs(meta, epochs))
        own.append(o)
        inside.append(i)
        floor.append(decompose(loaders, replayed(loaders, seed, orders))[0])
    res: dict[str, Any] = {"batches_per_epoch": len(orders[0]), "epochs_per_measurement": epochs}
    for arm, s in series.items():
        res[arm] = s.summary()
    for base in ("replay", "chain"):
        meta_s, base_s = series["meta"], series[base]
        res[f"meta_vs_{base}_wall"] = C.paired(meta_s.wall, base_s.wall)
        res[f"meta_vs_{base}_cpu"] = C.paired(meta_s.cpu, base_s.cpu)
        # per-batch median: robust to bursts of descheduling on a shared machine
        res[f"meta_vs_{base}_median_batch"] = C.paired(
            base_s.extra["median_batch_s"], meta_s.extra["median_batch_s"]
        )
    res["meta_own_us_per_batch"] = 1e6 * C.median(own)
    res["loader_us_per_batch"] = 1e6 * C.median(inside)
    res["meta_own_share"] = C.median([o / (o + i) for o, i in zip(own, inside, strict=True)])
    # what this attribution charges the least mixer (a replaying generator): timer calls, a frame per batch
    res["floor_us_per_batch"] = 1e6 * C.median(floor)
    res["floor_share"] = C.median([f / (f + i) for f, i in zip(floor, inside, strict=True)])
    # The target's figure: how much longer a batch takes through the MetaDataLoader than the same batch
    # replayed from plain DataLoaders, both measured the same way (so the timers' own cost cancels).
    res["meta_extra_vs_replay"] = C.median(
        [(o - f) / (i + f) for o, f, i in zip(own, floor, inside, strict=True)]
    )
    return res


def main() -> int:
    args = C.parser(__doc__.split("\n")[0]).parse_args()
    n_reps = C.reps(args, full=7, quick=2)
    C.setup_torch(args.threads)
    results = {}
    loaders, seed = three_corpora_loaders(args)
    results["windows"] = scenario(loaders, seed, n_reps, epochs=2 if args.quick else 4)
    times = 3 if args.quick else 20
    results[f"windows x{times}"] = scenario(repeated(loaders, times), seed, n_reps, epochs=1)
    loaders, seed = tiny_loaders(300 if args.quick else 1500)
    results["tiny"] = scenario(loaders, seed, n_reps, epochs=2 if args.quick else 4)

    rows = []
    for name, r in results.items():
        if name == "fit":
            continue
        rows.append(
            [
                name,
                r["batches_per_epoch"],
                f"{r['loader_us_per_batch']:.1f}",
                f"{r['meta_own_us_per_batch']:.2f}",
                f"{100 * r['meta_own_share']:.2f}%",
                f"{r['floor_us_per_batch']:.2f} ({100 * r['floor_share']:.2f}%)",
                f"{100 * r['meta_extra_vs_replay']:+.2f}%",
                C.fmt_ratio(r["meta_vs_replay_median_batch"]),
                C.fmt_ratio(r["meta_vs_replay_cpu"]),
                C.fmt_ratio(r["meta_vs_replay_wall"]),
                C.fmt_ratio(r["meta_vs_chain_median_batch"]),
            ]
        )
    C.table(
        f"MetaDataLoader over 3 DataLoaders vs plain DataLoaders, {n_reps} reps; ratios are meta/plain speed "
        "per rep, median [min..max]",
        [
            "scenario",
            "batches/epoch",
            "DataLoader us/batch",
            "meta own us/batch",
            "meta own share",
            "floor us/batch (share)",
            "meta - floor, share of replay",
            "vs replay (median batch)",
            "vs replay (cpu)",
            "vs replay (wall)",
            "vs chain (median batch)",
        ],
        rows,
    )
    for name in ("windows", f"windows x{times}"):
        r = results[name]
        extra, ratio = r["meta_extra_vs_replay"], r["meta_vs_replay_median_batch"]["median"]
        print(
            f"target ({name}) within 1% of plain DataLoaders: {'met' if extra <= 0.01 else 'NOT met'} "
            f"(by attribution +{100 * extra:.2f}% per batch over the replay: own "
            f"{r['meta_own_us_per_batch']:.2f} us - floor {r['floor_us_per_batch']:.2f} us; "
            f"side by side, median-batch ratio {ratio:.3f})"
        )
    # own time per batch = per-batch cost + per-epoch cost / batches per epoch: solve from the two scenarios
    short, long_ = results["windows"], results[f"windows x{times}"]
    n1, n2 = short["batches_per_epoch"], long_["batches_per_epoch"]
    o1, o2 = short["meta_own_us_per_batch"], long_["meta_own_us_per_batch"]
    per_epoch = (o1 - o2) / (1 / n1 - 1 / n2)
    per_batch = o2 - per_epoch / n2
    results["fit"] = {"per_batch_us": per_batch, "per_epoch_us": per_epoch}
    print(f"MetaDataLoader own time ~ {per_batch:.1f} us per batch + {per_epoch:.0f} us per epoch (fit)")
    payload = {"quick": args.quick, "reps": n_reps, "weights": WEIGHTS, "scenarios": results}
    C.write_json("loader", payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
