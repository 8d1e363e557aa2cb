"""Loaded recordings, normalisation statistics and time-aligned windows of (log-mel, biosignal)."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from a2b_pipeline.configs import DataConfig, ModelConfig
from a2b_pipeline.data import audio, feature_cache, features, signal_csv, targets
from a2b_pipeline.data.audio import read_audio
from a2b_pipeline.data.features import log_mel, n_frames
from a2b_pipeline.data.recording import BadRecordingError, Recording
from a2b_pipeline.data.targets import read_channels, resample_channels, signal_end

_MIN_STD = 1e-6


@dataclass
class LoadedRecording:
    features: torch.Tensor  # [T_frames, n_mels] raw log-mel, frame j at j / frame_rate
    target: torch.Tensor  # [T_target, C] raw signal, sample j at j / target_rate; NaN where unknown
    rec: Recording
    # [T_frames, width]: the model's own inputs on the same frame grid when it doesn't read log-mel
    # (hf_encoder: a pretrained encoder's hidden states, or the waveform in frames); baselines read `features`
    inputs: torch.Tensor | None = None

    @property
    def model_input(self) -> torch.Tensor:
        return self.features if self.inputs is None else self.inputs


def load_recording(rec: Recording, data: DataConfig, model: ModelConfig | None = None) -> LoadedRecording:
    """Decode and featurise one recording; the single place where audio is decoded.

    Both tensors end with the audio (limited by `rec.duration_seconds`); targets are NaN where a signal
    channel has no data. Raises BadRecordingError naming the recording for any unusable input.
    """
    # Decoding and resampling go through the feature cache (keyed by the sources' content, the settings and
    # the code; URLs are downloaded once): an unchanged recording is never decoded twice.
    all_features, n_samples = feature_cache.audio_features(
        rec, data, lambda path: _decode(path, data), FEATURE_CODE
    )
    audio_seconds = n_samples / data.sample_rate
    limit = min(audio_seconds, rec.duration_seconds or math.inf)
    # No signal time far past the recording's end (1e13 s would ask for a 291 TiB grid); a signal a little
    # longer than its audio gets the duration check's message below, which names both files.
    bound = 2 * limit + data.duration_tolerance_seconds + 60.0
    all_target, extent = feature_cache.target(
        rec, data, lambda local_rec: _read_target(local_rec, data, bound), TARGET_CODE
    )
    end, start = extent["end"], extent["start"]
    if abs(end - limit) > data.duration_tolerance_seconds:
        path = rec.signals[data.channels[0]].path
        raise BadRecordingError(
            rec,
            path,
            f"signal ends at {end:.2f} s of the audio but the audio lasts {limit:.2f} s "
            f"(differ by more than duration_tolerance_seconds={data.duration_tolerance_seconds}; "
            f"audio file {rec.audio_path}: one of the two is cut short?)",
        )
    usable = min(limit, end) - max(0.0, start)  # seconds with all data
    if usable < data.window_seconds:
        raise BadRecordingError(
            rec, rec.audio_path, f"too short: {usable:.2f} s usable, a window is {data.window_seconds} s"
        )
    # Both grids run to the audio's usable end; target samples past the signal's last one are NaN, and
    # WindowDataset leaves out windows that reach them.
    n_f = n_frames(round(limit * data.sample_rate), data.sample_rate, data.frame_rate)
    frames = all_features[:n_f]
    n_t = math.ceil(limit * data.target_rate - 1e-9)
    target = feature_cache.extend_target(all_target, n_t)
    inputs = _model_inputs(rec, data, model, n_f) if model is not None and reads_own_inputs(model) else None
    return LoadedRecording(features=frames, target=target, rec=rec, inputs=inputs)


def reads_own_inputs(model: ModelConfig) -> bool:
    """Models whose windows hold something other than log-mel frames."""
    return model.name == "hf_encoder"


def normalizes_inputs(model: ModelConfig | None) -> bool:
    """Inputs standardised with train-split statistics: not a waveform (its feature extractor does it)."""
    return not (model is not None and model.name == "hf_encoder" and model.finetune is not None)


def _model_inputs(rec: Recording, data: DataConfig, model: Any, n_f: int) -> torch.Tensor:
    """An hf_encoder's inputs for the recording's frames [n_f, width], through the feature cache (keyed by
    the encoder's id, revision, weights digest and layer selection, and the audio's content)."""
    from a2b_pipeline.models import hf_encoder  # transformers only where such a model is configured

    settings = {"kind": "hf_encoder", **hf_encoder.cache_settings(model, data.frame_rate)}
    code = (*FEATURE_CODE, hf_encoder)
    inputs, _ = feature_cache.audio_array(
        rec, data.cache_dir, "inputs", settings, lambda path: audio_inputs(path, data, model), code
    )
    return fit_frames(inputs, n_f)


def audio_inputs(path: str, data: DataConfig, model: Any) -> tuple[torch.Tensor, int]:
    """An hf_encoder's inputs for a whole audio file (decoded at the encoder's rate) and its samples."""
    from a2b_pipeline.models import hf_encoder

    sr = hf_encoder.encoder_rate(model)
    wave = read_audio(path, sr)
    n = n_frames(wave.shape[0], sr, data.frame_rate)
    return hf_encoder.recording_inputs(model, wave, n, data.frame_rate), int(wave.shape[0])


def fit_frames(inputs: torch.Tensor, n_f: int) -> torch.Tensor:
    """`n_f` frames: the encoder's grid can end a frame before the log-mel one (its last frame repeats)."""
    if inputs.shape[0] < n_f:
        inputs = torch.cat([inputs, inputs[-1:].expand(n_f - inputs.shape[0], -1)])
    return inputs[:n_f]


def _decode(path: str, data: DataConfig) -> tuple[torch.Tensor, int]:
    """Log-mel frames of the whole audio file and its length in samples at data.sample_rate."""
    wave = read_audio(path, data.sample_rate)
    return log_mel(wave, data.sample_rate, data.n_mels, data.frame_rate), int(wave.shape[0])


def _read_target(
    rec: Recording, data: DataConfig, max_seconds: float = math.inf
) -> tuple[torch.Tensor, dict[str, float]]:
    """Targets on t = j / target_rate up to the last signal sample (later ones are NaN by construction),
    with the second where the shortest channel ends and the latest channel start; a time past `max_seconds`
    is a bad recording."""
    series = read_channels(rec, data.channels, max_seconds)
    last = max(float(t[-1]) for t, _ in series)
    n = math.floor(last * data.target_rate + 1e-9) + 1
    extent = {"end": signal_end(series), "start": max(float(t[0]) for t, _ in series)}
    return resample_channels(series, data.target_rate, max(n, 0)), extent


# The code whose output the feature cache stores, hashed into its keys: an edit of any of it gives new keys.
FEATURE_CODE = (audio, features, _decode)
TARGET_CODE = (signal_csv, targets, _read_target)


def subject_key(rec: Recording) -> str:
    # Subject ids are only unique within a corpus.
    return f"{rec.dataset}/{rec.subject_id}"


@dataclass
class NormStats:
    """Normalisation of features and targets, JSON-able (saved with checkpoints for inference).

    Features: (x - feature_mean) / feature_std per mel bin, from the train split.
    Targets by `mode`: "global": train-split mean/std per channel; "subject": per subject, the mean/std of
    that subject's own recordings in any split (baselines are personal and, at inference time, known from a
    calibration recording; a val/test subject's stats never touch the model's weights); "none": identity.
    """

    mode: str
    channels: list[str]
    feature_mean: list[float]
    feature_std: list[float]
    target_mean: list[float]
    target_std: list[float]
    subjects: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # key -> {"mean", "std"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        return cls(**d)

    def finite(self) -> bool:
        """Every statistic a finite number (a NaN one turns every normalised value NaN)."""
        values = [self.feature_mean, self.feature_std, self.target_mean, self.target_std]
        values += [s[k] for s in self.subjects.values() for k in ("mean", "std")]
        try:
            return all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in values)
        except (TypeError, ValueError):
            return False

    def target_stats(self, dataset: str, subject: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) [C] used for a subject's targets."""
        if self.mode == "none":
            n = len(self.channels)
            return torch.zeros(n), torch.ones(n)
        if self.mode == "subject":
            key = f"{dataset}/{subject}"
            if key not in self.subjects:
                raise KeyError(f"no normalisation statistics for subject {key!r} (mode 'subject')")
            s = self.subjects[key]
            return torch.tensor(s["mean"]), torch.tensor(s["std"])
        return torch.tensor(self.target_mean), torch.tensor(self.target_std)

    def normalize_features(self, x: torch.Tensor) -> torch.Tensor:
        return (x - torch.tensor(self.feature_mean)) / torch.tensor(self.feature_std)


def _moments(tensors: list[torch.Tensor], width: int) -> tuple[list[float], list[float]]:
    """NaN-ignoring per-column mean and std over the rows of all tensors, accumulated in float64."""
    n = torch.zeros(width, dtype=torch.float64)
    s = torch.zeros(width, dtype=torch.float64)
    ss = torch.zeros(width, dtype=torch.float64)
    for t in tensors:
        t = t.double()
        ok = torch.isfinite(t)
        t = torch.where(ok, t, 0.0)
        n += ok.sum(0)
        s += t.sum(0)
        ss += t.square().sum(0)
    n = n.clamp_min(1)
    mean = s / n
    std = (ss / n - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std < _MIN_STD, torch.ones_like(std), std)  # a constant column stays as it is
    return mean.tolist(), std.tolist()


def compute_norm_stats(
    train: list[LoadedRecording], everything: list[LoadedRecording], data: DataConfig, features: bool = True
) -> NormStats:
    """Feature and global target stats from `train` only; per-subject target stats from each subject's own
    recordings in `everything` (see NormStats). The features are the model's inputs; `features=False`
    leaves them as they are (mean 0, std 1)."""
    if not train:
        raise ValueError("cannot compute normalisation statistics: the train split has no recordings")
    width = train[0].model_input.shape[1]
    if features:
        fm, fs = _moments([r.model_input for r in train], width)
    else:
        fm, fs = [0.0] * width, [1.0] * width
    tm, ts = _moments([r.target for r in train], len(data.channels))
    subjects: dict[str, dict[str, list[float]]] = {}
    if data.normalize == "subject":
        by_subject: dict[str, list[torch.Tensor]] = {}
        for r in everything:
            by_subject.setdefault(subject_key(r.rec), []).append(r.target)
        for key in sorted(by_subject):
            m, s = _moments(by_subject[key], len(data.channels))
            subjects[key] = {"mean": m, "std": s}
    return NormStats(data.normalize, list(data.channels), fm, fs, tm, ts, subjects)


class WindowDataset(Dataset):
    """Windows of `window_seconds` every `hop_seconds`, never crossing a recording.

    Window k of a recording starts at s = k * hop_seconds: x = frames round(s*frame_rate) + [0, Fw),
    y = target samples round(s*target_rate) + [0, Tw), with Fw = round(window_seconds*frame_rate) and
    Tw = round(window_seconds*target_rate). Windows whose target has gaps (NaN) are left out.
    """

    def __init__(self, loaded: list[LoadedRecording], data: DataConfig, norm: NormStats):
        self.loaded = loaded
        self.norm = norm
        self.frames_per_window = round(data.window_seconds * data.frame_rate)
        self.targets_per_window = round(data.window_seconds * data.target_rate)
        self._feat_stats = (torch.tensor(norm.feature_mean), torch.tensor(norm.feature_std))
        self._target_stats = [norm.target_stats(r.rec.dataset, r.rec.subject_id) for r in loaded]
        self.index: list[tuple[int, int, int, float]] = []  # (recording, frame start, target start, second)
        fw, tw = self.frames_per_window, self.targets_per_window
        for i, r in enumerate(loaded):
            for k in itertools.count():
                s = k * data.hop_seconds
                f0, t0 = round(s * data.frame_rate), round(s * data.target_rate)
                if f0 + fw > r.model_input.shape[0] or t0 + tw > r.target.shape[0]:
                    break
                if torch.isfinite(r.target[t0 : t0 + tw]).all():
                    self.index.append((i, f0, t0, s))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        r, f0, t0, _ = self.index[i]
        rec = self.loaded[r]
        fm, fs = self._feat_stats
        tm, ts = self._target_stats[r]
        x = (rec.model_input[f0 : f0 + self.frames_per_window] - fm) / fs
        y = (rec.target[t0 : t0 + self.targets_per_window] - tm) / ts
        return x.float(), y.float()

    def window_info(self, i: int) -> tuple[Recording, float]:
        """The recording of window i and the audio second where it starts (for plots and reports)."""
        r, _, _, s = self.index[i]
        return self.loaded[r].rec, s

    @property
    def recordings(self) -> list[Recording]:
        return [r.rec for r in self.loaded]
