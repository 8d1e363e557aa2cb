"""Data pipeline throughput, in windows per second, against the rate at which the model consumes windows.

Stages (the demo's corpora and settings: 16 kHz audio, 32 log-mel bins at 50 frames/s, 8 s windows, 2 s hop):
  decode      read_audio: decode the .wav and resample, per recording          (once per recording, cached)
  log-mel     log_mel on the decoded audio of a whole recording                (once per recording, cached)
  loader      make_loader over the prepared windows (what every epoch costs), num_workers 0 and 2:
              slicing the precomputed features, normalising, collating batches
  on the fly  a Dataset that computes each window's log-mel from the decoded audio in __getitem__
              (no precomputation), num_workers 0 and 2
  model       windows/s the demo model consumes in training steps (forward, backward, AdamW) on batches
              already in memory: steps/s x batch size
For the per-recording stages, windows/s counts the windows those recordings yield (train, val and test).
A stage whose rate is below the model's is a bottleneck when it runs on the training path: decode and
log-mel run once per recording before training (the feature cache keeps them across runs); the loader runs
every epoch. Wall clock throughout (worker processes don't show on this process's CPU clock).

    .venv/bin/python bench/data_throughput.py [--quick] [--reps N]
"""

from __future__ import annotations

import sys
import time
from typing import Any

import _common as C
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class OnTheFly(Dataset):
    """Windows computed from decoded audio on demand: log-mel of the window's samples, normalised."""

    def __init__(self, waves: list[torch.Tensor], data_cfg: Any, norm: Any) -> None:
        self.waves, self.d = waves, data_cfg
        self.win = round(data_cfg.window_seconds * data_cfg.sample_rate)
        hop = round(data_cfg.hop_seconds * data_cfg.sample_rate)
        self.frames = round(data_cfg.window_seconds * data_cfg.frame_rate)
        self.index = [(i, s) for i, w in enumerate(waves) for s in range(0, w.shape[0] - self.win + 1, hop)]
        self.mean, self.std = torch.tensor(norm.feature_mean), torch.tensor(norm.feature_std)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> torch.Tensor:
        from a2b_pipeline.data.features import log_mel

        i, s = self.index[k]
        d = self.d
        x = log_mel(self.waves[i][s : s + self.win], d.sample_rate, d.n_mels, d.frame_rate)[: self.frames]
        return (x - self.mean) / self.std


def count(loader: Any, epochs: int) -> int:
    n = 0
    for _ in range(epochs):
        for batch in loader:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            n += x.shape[0]
    return n


def main() -> int:
    p = C.parser(__doc__.split("\n")[0])
    args = p.parse_args()
    n_reps = C.reps(args, full=3, quick=1)
    C.setup_torch(args.threads)
    from a2b_pipeline.data.audio import read_audio
    from a2b_pipeline.data.features import log_mel
    from a2b_pipeline.data.pipeline import make_loader, prepare_data
    from a2b_pipeline.models import build_model, model_io

    cfg0 = C.bench_config(args.data_dir, quick=args.quick, threads=args.threads)
    d = cfg0.data
    prepared = prepare_data(cfg0)
    recs = [r for split in prepared.recordings.values() for lst in split.values() for r in lst]
    n_windows_all = sum(len(ds) for split in prepared.splits.values() for ds in split.values())
    waves = [read_audio(r.audio_path, d.sample_rate) for r in recs]
    audio_s = sum(w.shape[0] for w in waves) / d.sample_rate
    loaders = {}
    for w in (0, 2):
        cfg_w = C.bench_config(args.data_dir, quick=args.quick, threads=args.threads, data={"num_workers": w})
        loaders[w] = make_loader(prepared, cfg_w, "train")
    fly = OnTheFly(waves, d, prepared.norm)
    fly_loaders = {w: DataLoader(fly, batch_size=d.batch_size, num_workers=w) for w in (0, 2)}
    epochs = 1 if args.quick else 2

    # the model's appetite: training steps on batches already in memory
    torch.manual_seed(0)
    model = build_model(cfg0.model, model_io(cfg0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [b for _, b in zip(range(8), loaders[0], strict=False)]
    steps = 10 if args.quick else 30

    def consume() -> list[float]:
        stamps = [time.perf_counter()]
        for k in range(steps):
            x, y = batches[k % len(batches)]
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        return stamps

    def decode() -> int:
        for r in recs:
            read_audio(r.audio_path, d.sample_rate)
        return n_windows_all

    def features() -> int:
        for w in waves:
            log_mel(w, d.sample_rate, d.n_mels, d.frame_rate)
        return n_windows_all

    stages: dict[str, Any] = {
        "decode": decode,
        "log-mel": features,
        "loader, 0 workers": lambda: count(loaders[0], epochs),
        "loader, 2 workers": lambda: count(loaders[2], epochs),
        "on the fly, 0 workers": lambda: count(fly_loaders[0], 1),
        "on the fly, 2 workers": lambda: count(fly_loaders[2], 1),
    }
    series = {k: C.Series() for k in [*stages, "model"]}
    for rep in range(n_reps):
        for name in C.rotate([*stages, "model"], rep):
            start = C.clocks()
            if name == "model":
                stamps = consume()  # median step: robust to descheduling; a step eats a batch of windows
                series[name].wall.append(d.batch_size / C.median_interval(stamps))
                series[name].cpu.append(float("nan"))
            else:
                n = stages[name]()
                series[name].add(n, C.Span.since(start))
            print(f"  rep {rep + 1}/{n_reps} {name}: {series[name].wall[-1]:.0f} windows/s", flush=True)

    need = C.median(series["model"].wall)
    rows, results = [], {}
    for name, s in series.items():
        rate = C.median(s.wall)
        rows.append([name, f"{rate:.0f}", "-" if name == "model" else f"{rate / need:.2f}"])
        results[name] = {**s.summary(), "vs_model": rate / need}
    rt = {k: C.median(series[k].wall) * audio_s / n_windows_all for k in ("decode", "log-mel")}
    C.table(
        f"Data pipeline throughput (windows/s, wall, median of {n_reps}); {len(recs)} recordings, "
        f"{audio_s:.0f} s of audio, {n_windows_all} windows; batch {d.batch_size}; "
        f"x model = supply / the model's consumption",
        ["stage", "windows/s", "x model"],
        rows,
    )
    print(
        f"decode {rt['decode']:.0f}x real time, log-mel {rt['log-mel']:.0f}x real time "
        f"(seconds of audio per second)"
    )
    C.write_json(
        "data_throughput",
        {
            "quick": args.quick,
            "reps": n_reps,
            "recordings": len(recs),
            "audio_seconds": audio_s,
            "windows": n_windows_all,
            "batch_size": d.batch_size,
            "data": d.model_dump(mode="json", exclude={"datasets"}),
            "realtime_factor": rt,
            "stages": results,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
