"""`a2b predict`: a trained checkpoint turns audio files into predicted biosignals (CSV + PNG per file).

Any length, wav / flac / mp3 / ogg, mono or stereo, any sample rate: the audio is decoded, mixed to mono
and resampled like the training data, cut into the run's windows (the last one aligned to the end, so the
whole file is covered) and the windows' predictions are stitched back by overlap-add. The signals come out
in their units when the run's normalisation can be undone (data.normalize "global" or "none", or "subject"
with `subject=` one of the run's listeners), otherwise as z-scores; the CSV header says which
(`eda` vs `eda_z`), and a JSON beside each CSV records the checkpoint, units and duration.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from a2b_pipeline.configs import RunConfig
from a2b_pipeline.data.audio import read_audio
from a2b_pipeline.data.datasets import NormStats, audio_inputs, fit_frames, reads_own_inputs
from a2b_pipeline.data.features import log_mel
from a2b_pipeline.data.pipeline import load_norm_stats, prepare_data, save_norm_stats
from a2b_pipeline.evaluation.evaluate import load_model, overlap_add, resolve_checkpoint
from a2b_pipeline.files import atomic_write
from a2b_pipeline.security import Grant, check_grant
from a2b_pipeline.state import TrainState

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff")


def norm_stats(ckpt: Path, state: TrainState) -> NormStats:
    """The statistics the checkpoint was trained with: `<run_dir>/norm_stats.json` (written by training)
    when it matches the checkpoint's data version, else recomputed from the run's corpus (and saved)."""
    saved = load_norm_stats(ckpt.parent, state.data_version)
    if saved is not None:
        return saved
    log.info("%s: no saved normalisation statistics; recomputing them from the run's corpus", ckpt)
    check_grant(state.config, Grant.from_env(), str(ckpt))  # a checkpoint's config is data, not authority
    data = prepare_data(state.config)
    save_norm_stats(data, ckpt.parent)
    return data.norm


def audio_files(inputs: list[str | Path]) -> list[tuple[Path, str]]:
    """(file, output stem) for each input file and each audio file under each input directory."""
    out: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
            out += [(p, str(p.relative_to(item).with_suffix(""))) for p in found]
        else:
            out.append((item, item.stem))  # a missing file is reported by its own error, not dropped
    return out


@dataclass
class Predicted:
    source: Path
    csv: Path | None = None
    png: Path | None = None
    seconds: float = 0.0
    error: str | None = None


class Predictor:
    """A loaded checkpoint and its normalisation, predicting whole audio files."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", subject: str | None = None):
        self.ckpt = resolve_checkpoint(checkpoint)
        self.state, self.model = load_model(self.ckpt, device)
        self.cfg: RunConfig = self.state.config
        self.device = torch.device(device)
        self.norm = norm_stats(self.ckpt, self.state)
        self.subject = subject
        self.units = self._units()

    def _units(self) -> str:
        mode = self.norm.mode
        if mode == "subject" and self.subject is not None:
            if self.subject not in self.norm.subjects:
                known = ", ".join(sorted(self.norm.subjects)[:10])
                raise ValueError(
                    f"--subject {self.subject!r} is not one of the run's listeners ({known}, ...)"
                )
            return "signal"
        return "signal" if mode in ("global", "none") else "z"

    def _denormalize(self, y: np.ndarray) -> np.ndarray:
        if self.units == "z" or self.norm.mode == "none":
            return y
        if self.norm.mode == "subject":
            assert self.subject is not None
            s = self.norm.subjects[self.subject]
            mean, std = np.array(s["mean"]), np.array(s["std"])
        else:
            mean, std = np.array(self.norm.target_mean), np.array(self.norm.target_std)
        return y * std + mean

    @torch.no_grad()
    def predict(self, path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
        """(predicted signals [n_target, C] in `self.units`, loudness in dB per frame, audio seconds)."""
        d = self.cfg.data
        wave = read_audio(str(path), d.sample_rate)
        seconds = wave.shape[0] / d.sample_rate
        feats = log_mel(wave, d.sample_rate, d.n_mels, d.frame_rate)
        loud_db = torch.logsumexp(feats.double(), dim=1).numpy() * 10.0 / math.log(10.0)
        if reads_own_inputs(self.cfg.model):  # hf_encoder: the encoder's states (or waveform), same grid
            feats_in = fit_frames(audio_inputs(str(path), d, self.cfg.model)[0], feats.shape[0])
        else:
            feats_in = feats
        x = self.norm.normalize_features(feats_in.float()).float()
        fw, tw = round(d.window_seconds * d.frame_rate), round(d.window_seconds * d.target_rate)
        n_t = max(1, math.ceil(seconds * d.target_rate - 1e-9))
        if x.shape[0] < fw:  # shorter than a window: pad with the mean frame (0 after normalising)
            x = torch.cat([x, torch.zeros(fw - x.shape[0], x.shape[1])])
        starts = self._window_starts(x.shape[0], n_t, fw, tw)
        batch = torch.stack([x[f0 : f0 + fw] for f0, _ in starts])
        preds = []
        for i in range(0, len(batch), 64):
            preds.append(self.model(batch[i : i + 64].to(self.device)).float().cpu().double().numpy())
        y = overlap_add(np.concatenate(preds), [t0 for _, t0 in starts], max(n_t, tw))[:n_t]
        return self._denormalize(y), loud_db, seconds

    def _window_starts(self, n_f: int, n_t: int, fw: int, tw: int) -> list[tuple[int, int]]:
        """(frame, target) starts of the windows: every hop_seconds as in training, plus one ending at the
        file's end when the hops don't reach it."""
        d = self.cfg.data
        starts, k = [], 0
        while True:
            s = k * d.hop_seconds
            f0, t0 = round(s * d.frame_rate), round(s * d.target_rate)
            if f0 + fw > n_f or t0 + tw > max(n_t, tw):
                break
            starts.append((f0, t0))
            k += 1
        if not starts:
            return [(0, 0)]
        if starts[-1][1] + tw < n_t:
            t0 = n_t - tw
            starts.append((min(round(t0 / d.target_rate * d.frame_rate), n_f - fw), t0))
        return starts

    def write(self, path: Path, stem: str, out_dir: Path) -> Predicted:
        y, loud_db, seconds = self.predict(path)
        d = self.cfg.data
        csv_path = out_dir / f"{stem}.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        names = [c if self.units == "signal" else f"{c}_z" for c in d.channels]
        t = np.arange(len(y)) / d.target_rate
        lines = [",".join(["time", *names])]
        lines += [",".join([f"{ti:.4f}", *(f"{v:.6g}" for v in row)]) for ti, row in zip(t, y, strict=True)]
        atomic_write(csv_path, ("\n".join(lines) + "\n").encode())
        meta = {
            "audio": str(path),
            "checkpoint": str(self.ckpt),
            "experiment": self.cfg.name,
            "channels": list(d.channels),
            "units": "signal units" if self.units == "signal" else "z-scores (normalisation not undoable)",
            "normalize": self.norm.mode,
            "subject": self.subject,
            "audio_seconds": seconds,
            "target_rate": d.target_rate,
            "rows": len(y),
        }
        atomic_write(csv_path.with_suffix(".json"), (json.dumps(meta, indent=1) + "\n").encode())
        png = csv_path.with_suffix(".png")
        png.write_bytes(plot_prediction(y, names, d.target_rate, loud_db, d.frame_rate, f"{path.name}"))
        return Predicted(path, csv_path, png, seconds)


def predict_files(
    checkpoint: str | Path,
    inputs: list[str | Path],
    out_dir: str | Path,
    device: str = "cpu",
    subject: str | None = None,
) -> list[Predicted]:
    """Predict every input file (directories: every audio file under them); a file that fails gets its
    error (naming it) in its result and the others still run."""
    predictor = Predictor(checkpoint, device, subject)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, stem in audio_files(inputs):
        try:
            results.append(predictor.write(path, stem, out))
        except Exception as e:  # one bad file must not stop the others; the message names it
            reason = getattr(e, "reason", None) or str(e)
            results.append(Predicted(path, error=f"{path}: {reason.removeprefix(f'{path}: ')}"))
    return results


def plot_prediction(
    y: np.ndarray, names: list[str], target_rate: float, loud_db: np.ndarray, frame_rate: float, title: str
) -> bytes:
    """PNG: the audio's loudness on top, each predicted channel below it, on one time axis."""
    import matplotlib  # only for plots: a heavy import

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1 + len(names), 1, figsize=(10, 1.6 + 1.6 * len(names)), sharex=True, dpi=80)
    axes[0].plot(np.arange(len(loud_db)) / frame_rate, loud_db, color="tab:gray", linewidth=0.8)
    axes[0].set_ylabel("loudness\n(dB, relative)", fontsize=8)
    t = np.arange(len(y)) / target_rate
    for i, name in enumerate(names):
        axes[i + 1].plot(t, y[:, i], color="tab:orange", linewidth=1.2)
        axes[i + 1].set_ylabel(name, fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("seconds", fontsize=8)
    fig.suptitle(f"{title}: predicted", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
