"""Benchmark: a pretrained encoder's embedding throughput, and epoch 2 (cached embeddings) vs epoch 1.

    .venv/bin/python bench/encoders.py                # a wav2vec2-base-sized encoder, small corpora
    .venv/bin/python bench/encoders.py --demo-corpus  # ... over the demo's corpora (1200 s of audio)
    .venv/bin/python bench/encoders.py --quick        # a tiny encoder: a smoke run (~20 s)

The encoder has the architecture of facebook/wav2vec2-base (transformers' Wav2Vec2Config defaults: 12 layers,
768 wide, 95M parameters), randomly initialised from its config and saved to `--data-dir` (nothing is
downloaded): it costs what the real model costs per second of audio. Two measurements, in one process:

  throughput      seconds of audio encoded per second (x real time) through `hf_encoder.encode`, in chunks
                  (chunk_seconds 20, overlap 2) as the feature cache computes them, repeated `--reps` times;
  epochs          `train()` of a frozen `hf_encoder` (weighted sum of all 13 layers, the demo's conv+GRU
                  head) for 2 epochs from a cold feature cache: epoch 1 runs the encoder over every
                  recording (inside train's data preparation) and then the head's steps; epoch 2 reads the
                  cached embeddings only. Times from train()'s start to the last optimizer step of each epoch
                  (a global optimizer step hook, as overhead.py), both clocks, and their ratio.

Prints a table and writes JSON (--json, default bench/out/encoders.json).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
    StepClock,
    bench_config_dict,
    clocks,
    median,
    parser,
    reps,
    setup_torch,
    table,
    write_json,
)


def save_encoder(path: Path, quick: bool) -> Path:
    """A randomly initialised wav2vec2 encoder (base-sized, or tiny with --quick) with its extractor."""
    import transformers as tf

    if (path / "config.json").exists():
        return path
    torch.manual_seed(0)
    if quick:
        conf = tf.Wav2Vec2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(32, 32),
            conv_stride=(10, 32),
            conv_kernel=(10, 32),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
        )
    else:
        conf = tf.Wav2Vec2Config()  # facebook/wav2vec2-base's architecture
    tf.Wav2Vec2Model(conf).save_pretrained(path)
    tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(path)
    return path


def throughput(source: Path, seconds: float, n: int) -> dict[str, float]:
    from a2b_pipeline.configs import HFEncoderConfig
    from a2b_pipeline.models import hf_encoder as hf

    cfg = HFEncoderConfig(source=str(source), chunk_seconds=20.0, overlap_seconds=2.0)
    enc = hf.shared_encoder(cfg)
    wave = torch.randn(int(seconds * enc.sampling_rate)) * 0.1
    frames = int(seconds * 50)
    walls, cpus = [], []
    with torch.no_grad():
        hf.recording_inputs(cfg, wave[: enc.sampling_rate * 2], 100, 50.0)  # warm-up
        for _ in range(n):
            start = clocks()
            hf.recording_inputs(cfg, wave, frames, 50.0)
            walls.append(time.perf_counter() - start[0])
            cpus.append(time.process_time() - start[1])
    params = sum(p.numel() for p in enc.parameters())
    return {
        "audio_seconds": seconds,
        "parameters": params,
        "x_realtime_wall": seconds / median(walls),
        "x_realtime_cpu": seconds / median(cpus),
    }


def epochs(args, source: Path) -> dict[str, float]:
    from a2b_pipeline.configs import config_from_dict
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    model = {
        "name": "hf_encoder",
        "source": str(source),
        "chunk_seconds": 20.0,
        "overlap_seconds": 2.0,
        "head": {"name": "conv_gru", "conv_channels": 48, "hidden": 48, "dropout": 0.1},
    }
    small = not args.demo_corpus  # 2 x 3 listeners x 2 recordings x 16 s: 192 s of audio
    raw = bench_config_dict(args.data_dir, quick=small, threads=args.threads, model=model)
    cache = args.data_dir / "encoders-cache"
    shutil.rmtree(cache, ignore_errors=True)  # epoch 1 from a cold cache
    raw["data"]["cache_dir"] = str(cache)
    raw["checkpoint"].update(dir=str(args.data_dir / "encoder-runs"), every_n_steps=None)
    raw["train"].update(max_steps=None, num_epochs=2, val_every_n_steps=100000, log_every_n_steps=100000)
    cfg = config_from_dict(raw, "bench")
    shutil.rmtree(args.data_dir / "encoder-runs", ignore_errors=True)
    audio_s = sum(
        d["synthetic"]["subjects"] * d["synthetic"]["recordings_per_subject"] * d["synthetic"]["seconds"]
        for d in raw["data"]["datasets"]
    )
    start = clocks()
    with StepClock() as clock:
        state = train(TrainState.from_config(cfg))
    per_epoch = state.global_step // 2
    (w1, c1), (w2, c2) = clock.stamps[per_epoch - 1], clock.stamps[-1]
    e1 = (w1 - start[0], c1 - start[1])
    e2 = (w2 - w1, c2 - c1)
    return {
        "audio_seconds": audio_s,
        "steps_per_epoch": per_epoch,
        "epoch1_wall_s": e1[0],
        "epoch1_cpu_s": e1[1],
        "epoch2_wall_s": e2[0],
        "epoch2_cpu_s": e2[1],
        "epoch2_over_epoch1_wall": e2[0] / e1[0],
        "epoch2_over_epoch1_cpu": e2[1] / e1[1],
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--demo-corpus", action="store_true", help="the demo's corpora (1200 s of audio)")
    args = p.parse_args()
    setup_torch(args.threads)
    source = save_encoder(args.data_dir / ("w2v2-tiny" if args.quick else "w2v2-base-random"), args.quick)
    tp = throughput(source, 10.0 if args.quick else 30.0, reps(args, full=3, quick=2))
    ep = epochs(args, source)
    table(
        f"embedding throughput ({tp['parameters'] / 1e6:.1f}M-parameter wav2vec2, {args.threads} thread(s))",
        ["audio s", "x real time (wall)", "x real time (CPU)", "hour of audio (wall)"],
        [
            [
                f"{tp['audio_seconds']:.0f}",
                f"{tp['x_realtime_wall']:.1f}",
                f"{tp['x_realtime_cpu']:.1f}",
                f"{3600 / tp['x_realtime_wall'] / 60:.1f} min",
            ]
        ],
    )
    table(
        f"frozen hf_encoder, 2 epochs over {ep['audio_seconds']:.0f} s of audio "
        f"({ep['steps_per_epoch']} steps/epoch)",
        ["epoch", "wall s", "CPU s", "vs epoch 1 (wall)", "vs epoch 1 (CPU)"],
        [
            [
                "1 (encoder runs, cache written)",
                f"{ep['epoch1_wall_s']:.2f}",
                f"{ep['epoch1_cpu_s']:.2f}",
                "1",
                "1",
            ],
            [
                "2 (cached embeddings)",
                f"{ep['epoch2_wall_s']:.2f}",
                f"{ep['epoch2_cpu_s']:.2f}",
                f"{ep['epoch2_over_epoch1_wall']:.3f}",
                f"{ep['epoch2_over_epoch1_cpu']:.3f}",
            ],
        ],
    )
    write_json("encoders", {"throughput": tp, "epochs": ep}, args.json)


if __name__ == "__main__":
    main()
