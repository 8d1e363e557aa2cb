"""`hf_encoder`: a pretrained audio encoder from Hugging Face `transformers` (wav2vec2, HuBERT, WavLM, MERT,
AST, Whisper's encoder, CLAP's audio tower) under a small sequence head of this package.

The audio is resampled to the encoder's rate and normalised by the model's own feature extractor; one
layer's hidden states (or all of them, for a learned weighted sum) are mapped onto the frame grid
(data.frame_rate) and the head pools them to the target rate.

What a window holds depends on the strategy:
- frozen (no `finetune`): the encoder's hidden states on the frame grid, computed once per recording and
  kept in the feature cache (data/feature_cache.py), so no later epoch or experiment runs the encoder;
- fine-tuned: the waveform itself (data.frame_rate frames of sample_rate / frame_rate samples each), and
  the encoder runs in every step.

Long audio is encoded in chunks that overlap (`chunk_seconds`, `overlap_seconds`): each chunk keeps only
its middle, so memory is bounded by one chunk whatever the recording's length. `transformers` is an
optional extra (`pip install -e '.[encoders]'`), imported only when such a model is used.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xxhash
from torch import nn

from a2b_pipeline.configs import HFEncoderConfig
from a2b_pipeline.models.layers import ModelIO

# Encoder forward passes in this process (chunks of a batch), for tests and benchmarks: a frozen run's
# later epochs and experiments must not add to it.
STATS = {"encoder_chunks": 0}

# model_type -> how the encoder is fed and what its hidden states look like
_KINDS = {"audio-spectrogram-transformer": "ast", "whisper": "whisper", "clap": "clap"}


class EncoderUnavailableError(ValueError):
    """model.source can't be loaded (transformers not installed, the hub not reachable, not a model
    directory, remote code not trusted). A ValueError: the CLI prints its message and exits 1."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise EncoderUnavailableError(
            "model.name hf_encoder needs Hugging Face transformers: pip install -e '.[encoders]'"
        ) from None
    return transformers


def is_local(cfg: HFEncoderConfig) -> bool:
    return Path(cfg.source).expanduser().is_dir()


def _load_kwargs(cfg: HFEncoderConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision is not None:
        kwargs["revision"] = cfg.revision
    return kwargs


def _source(cfg: HFEncoderConfig) -> str:
    return str(Path(cfg.source).expanduser()) if is_local(cfg) else cfg.source


def _unavailable(cfg: HFEncoderConfig, e: BaseException) -> EncoderUnavailableError:
    if "trust_remote_code" in str(e) and not cfg.trust_remote_code:
        return EncoderUnavailableError(
            f"model.source {cfg.source!r}: its model class is Python code from its repository, which runs "
            "only with model.trust_remote_code: true (set it if you trust that code at this revision; README "
            "'Pretrained audio encoders')"
        )
    if is_local(cfg):
        return EncoderUnavailableError(
            f"model.source {cfg.source!r}: not a loadable transformers model directory "
            f"(save_pretrained of a model and its feature extractor): {str(e).splitlines()[0][:300]}"
        )
    return EncoderUnavailableError(
        f"model.source {cfg.source!r} (revision {cfg.revision}): can't be loaded from the Hugging Face hub "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). On a machine without the hub, download it "
        f"where the hub is reachable (`hf download {cfg.source} --revision {cfg.revision} "
        "--local-dir DIR`), copy DIR here and set model.source to that directory"
    )


@functools.lru_cache(maxsize=8)
def _config(source: str, revision: str | None, trust_remote_code: bool) -> Any:
    tf = _transformers()
    return tf.AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code)


@dataclass(frozen=True)
class EncoderShape:
    """What the head needs to know of an encoder, from its config alone (no weights)."""

    kind: str  # "ssl" (wav2vec2 family, MERT), "ast", "whisper", "clap"
    width: int  # hidden size of the states used
    n_states: int  # hidden states returned (layers + embeddings; 1 for CLAP)


def encoder_shape(cfg: HFEncoderConfig) -> EncoderShape:
    try:
        conf = _config(_source(cfg), cfg.revision, cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _unavailable(cfg, e) from None
    kind = _KINDS.get(conf.model_type, "ssl")
    if kind == "clap":
        audio = conf.audio_config
        # the last Swin stage's width (each stage doubles it)
        shape = EncoderShape(kind, audio.patch_embeds_hidden_size * 2 ** (len(audio.depths) - 1), 1)
    elif kind == "whisper":
        shape = EncoderShape(kind, conf.d_model, conf.encoder_layers + 1)
    else:
        shape = EncoderShape(kind, conf.hidden_size, conf.num_hidden_layers + 1)
    if cfg.layer != "weighted" and not -shape.n_states <= cfg.layer < shape.n_states:
        raise ValueError(f"model.layer={cfg.layer}: {cfg.source} has hidden states 0..{shape.n_states - 1}")
    if kind == "clap" and cfg.layer not in (-1, 0):
        raise ValueError(
            "model.layer: CLAP's audio tower gives one time series (its last stage; the Swin stages differ "
            f"in width), so layer must be -1, got {cfg.layer!r}"
        )
    return shape


def selected_states(cfg: HFEncoderConfig, shape: EncoderShape) -> int:
    """How many hidden states a frame carries: all of them for a weighted sum, else one."""
    return shape.n_states if cfg.layer == "weighted" and shape.kind != "clap" else 1


class Encoder(nn.Module):
    """A loaded transformers encoder with its feature extractor: waveform [B, N] -> hidden states."""

    def __init__(self, cfg: HFEncoderConfig, all_states: bool = False):
        super().__init__()
        tf = _transformers()
        tf.utils.logging.disable_progress_bar()  # a bar per load would drown the run's own log lines
        src, kwargs = _source(cfg), _load_kwargs(cfg)
        self.shape = encoder_shape(cfg)
        try:
            # the RNG of the run is not this load's business (initialisers of weights that get overwritten)
            with torch.random.fork_rng(devices=[]):
                model = tf.AutoModel.from_pretrained(src, **kwargs)
            self.extractor = tf.AutoFeatureExtractor.from_pretrained(src, **kwargs)
        except (OSError, ValueError) as e:
            raise _unavailable(cfg, e) from None
        if self.shape.kind == "whisper":
            model = model.get_encoder()
        elif self.shape.kind == "clap":
            model = model.audio_model
        self.net = model.float().eval()
        self.sampling_rate = int(self.extractor.sampling_rate)
        self.layer = (
            "weighted" if all_states else cfg.layer
        )  # all_states: every hidden state, to select later
        self.bf16 = cfg.encoder_precision == "bf16"

    @functools.cached_property
    def weights_digest(self) -> str:
        """xxh3-128 over the weights as loaded (names, dtypes, shapes, bytes): part of the cache key."""
        h = xxhash.xxh3_128()
        for name, t in sorted(self.net.state_dict().items()):
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def max_seconds(self) -> float | None:
        """The input length of encoders that take a fixed one (their extractor pads to it)."""
        fe = self.extractor
        if self.shape.kind == "ast":
            return fe.max_length * 0.01  # 10 ms frames
        if self.shape.kind == "whisper":
            return fe.n_samples / fe.sampling_rate
        if self.shape.kind == "clap":
            return fe.nb_max_samples / fe.sampling_rate
        return None

    def layer_modules(self) -> nn.ModuleList:
        """The stack of transformer layers (the longest ModuleList named `layer(s)`, not a conv stack)."""
        found = [
            m
            for name, m in self.net.named_modules()
            if isinstance(m, nn.ModuleList) and re.search(r"(^|\.)layers?$", name) and "conv" not in name
        ]
        if not found:
            raise ValueError(f"{type(self.net).__name__}: no stack of layers found to unfreeze")
        return max(found, key=len)

    def _inputs(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """The extractor's normalised inputs for a batch of waveforms at the encoder's rate."""
        waves = [w for w in wave.detach().float().cpu().numpy().astype(np.float32)]
        kwargs: dict[str, Any] = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        if self.shape.kind == "clap":
            fusion = bool(getattr(self.net.config, "enable_fusion", False))
            kwargs.update(truncation="fusion" if fusion else "rand_trunc", padding="repeatpad")
        out = self.extractor(waves, **kwargs)
        return {k: v.to(wave.device) for k, v in out.items() if k in ("input_values", "input_features")}

    def states(self, wave: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Hidden states [B, S, t, D] of a chunk (S: the selected states) and the seconds the t frames
        span (the padded input of fixed-length encoders)."""
        STATS["encoder_chunks"] += 1
        inputs = self._inputs(wave)
        seconds = wave.shape[-1] / self.sampling_rate
        ctx = torch.autocast(wave.device.type, dtype=torch.bfloat16) if self.bf16 else _nullcontext()
        with ctx:
            out = self.net(**inputs, output_hidden_states=self.shape.kind != "clap")
        if self.shape.kind == "clap":
            h = out.last_hidden_state.mean(2).transpose(1, 2)  # [B, C, freq, time] -> [B, time, C]
            return h[:, None].float(), self.max_seconds() or seconds
        hs = out.hidden_states
        if self.layer != "weighted":
            hs = (hs[self.layer],)
        if self.shape.kind == "ast":
            f, t = self.net.embeddings.get_shape(self.net.config)
            hs = tuple(h[:, -f * t :].reshape(h.shape[0], f, t, h.shape[-1]).mean(1) for h in hs)
        h = torch.stack([x.float() for x in hs], 1)
        return h, self.max_seconds() or seconds


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def encode(
    enc: Encoder, wave: torch.Tensor, n_frames: int, frame_rate: float, chunk_s: float, overlap_s: float
) -> torch.Tensor:
    """Hidden states [B, S, n_frames, D] of waveforms [B, N] on the frame grid (frame j at j / frame_rate),
    in chunks of `chunk_s` seconds overlapping by `overlap_s`: each chunk keeps its middle frames, so a long
    recording needs the memory of one chunk."""
    sr = enc.sampling_rate
    cap = enc.max_seconds()
    chunk_s = min(chunk_s, cap) if cap else chunk_s
    fc = max(1, math.floor(chunk_s * frame_rate))
    fo = min(fc - 1, round(overlap_s * frame_rate))
    hop = fc - fo
    spf = sr / frame_rate
    out: torch.Tensor | None = None
    for core in range(0, n_frames, hop):
        core_end = min(core + hop, n_frames)
        c0 = max(0, min(core - fo // 2, n_frames - fc))
        c1 = min(n_frames, c0 + fc)
        piece = wave[:, round(c0 * spf) : max(round(c1 * spf), round(c0 * spf) + 1)]
        h, covered = enc.states(piece)
        real = max(1, round(h.shape[2] * min(1.0, piece.shape[-1] / sr / covered)))
        h = _to_frames(h[:, :, :real], c1 - c0)
        if out is None:
            out = h.new_zeros(h.shape[0], h.shape[1], n_frames, h.shape[3])
        out[:, :, core:core_end] = h[:, :, core - c0 : core_end - c0]
    assert out is not None, "encode: no frames"
    return out


def _to_frames(h: torch.Tensor, n: int) -> torch.Tensor:
    """[B, S, t, D] at the encoder's rate -> [B, S, n, D] on the frame grid (linear interpolation)."""
    b, s, t, d = h.shape
    if t == n:
        return h
    flat = h.permute(0, 1, 3, 2).reshape(b, s * d, t)
    return (
        F.interpolate(flat, size=n, mode="linear", align_corners=False)
        .reshape(b, s, d, n)
        .permute(0, 1, 3, 2)
    )


def samples_per_frame(sampling_rate: int, frame_rate: float) -> int:
    """Waveform samples per frame of a fine-tuned encoder's window: must be whole."""
    spf = sampling_rate / frame_rate
    if abs(spf - round(spf)) > 1e-9:
        raise ValueError(
            f"data.frame_rate={frame_rate:g}: a fine-tuned encoder reads the waveform in frames of "
            f"sample_rate / frame_rate samples, and {sampling_rate} / {frame_rate:g} is not whole "
            "(use a frame rate that divides it, e.g. 50)"
        )
    return round(spf)


# ---- what the data pipeline stores per recording ----

_SHARED: dict[str, Encoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_encoder(cfg: HFEncoderConfig) -> Encoder:
    """One encoder per (source, revision, precision) in this process, for computing cached embeddings."""
    key = cfg.model_dump_json(include={"source", "revision", "trust_remote_code", "encoder_precision"})
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Encoder(cfg, all_states=True)
        return _SHARED[key]


def cache_settings(cfg: HFEncoderConfig, frame_rate: float) -> dict[str, Any]:
    """What the cached embeddings of a recording depend on besides the audio and the code."""
    enc = shared_encoder(cfg)
    return {
        "model": cfg.source,
        "revision": cfg.revision,
        "weights": enc.weights_digest if cfg.finetune is None else None,
        "layer": cfg.layer,
        "precision": cfg.encoder_precision,
        "chunk_seconds": cfg.chunk_seconds,
        "overlap_seconds": cfg.overlap_seconds,
        "frame_rate": frame_rate,
        "finetune": cfg.finetune is not None,
        "sampling_rate": enc.sampling_rate,
    }


@torch.no_grad()
def recording_inputs(
    cfg: HFEncoderConfig, wave: torch.Tensor, n_frames: int, frame_rate: float
) -> torch.Tensor:
    """A recording's model input [n_frames, width] from its waveform at the encoder's rate: the selected
    hidden states (frozen; float16 to halve the cache) or the waveform in frames (fine-tuned)."""
    enc = shared_encoder(cfg)
    if cfg.finetune is not None:
        spf = samples_per_frame(enc.sampling_rate, frame_rate)
        w = F.pad(wave.float(), (0, max(0, n_frames * spf - wave.shape[0])))[: n_frames * spf]
        return w.reshape(n_frames, spf)
    h = encode(enc, wave[None], n_frames, frame_rate, cfg.chunk_seconds, cfg.overlap_seconds)[0]
    if cfg.layer != "weighted":
        h = h[[cfg.layer]] if enc.shape.kind != "clap" else h
    return h.permute(1, 0, 2).reshape(n_frames, -1).half()  # [S, T, D] -> [T, S * D]


def encoder_rate(cfg: HFEncoderConfig) -> int:
    return shared_encoder(cfg).sampling_rate


# ---- the model ----


class HFEncoderModel(nn.Module):
    """Window inputs (cached hidden states, or the waveform when fine-tuning) -> [B, T_target, C]: the
    encoder (fine-tuning only), one layer or a learned softmax-weighted sum of all, a small sequence head."""

    def __init__(self, cfg: HFEncoderConfig, io: ModelIO):
        super().__init__()
        from a2b_pipeline.models import build_model  # the heads are this package's models

        self.cfg = cfg
        self.shape = encoder_shape(cfg)
        self.n_states = selected_states(cfg, self.shape)
        self.layer_weights = nn.Parameter(torch.zeros(self.n_states)) if self.n_states > 1 else None
        self.encoder: Encoder | None = None
        if cfg.finetune is None:
            # which weights computed the embeddings the head learnt from: a checkpoint loaded beside other
            # weights under the same model.source is refused (see _load_from_state_dict)
            digest = bytes.fromhex(shared_encoder(cfg).weights_digest)
            self.register_buffer("encoder_digest", torch.tensor(list(digest), dtype=torch.uint8))
        else:
            self.encoder = Encoder(cfg)
            self.encoder.requires_grad_(False)
            self._unfreeze = self._top_layers(cfg.finetune.unfreeze_top_k)
            self.apply_step(0)  # trainable from the start when after_step is 0 (DDP registers them at start)
        head_io = ModelIO(
            n_mels=self.shape.width, channels=io.channels, in_frames=io.in_frames, out_steps=io.out_steps
        )
        self.head = build_model(cfg.head, head_io)
        self.in_frames = io.in_frames

    def _top_layers(self, k: int) -> list[nn.Parameter]:
        if k == 0 or self.encoder is None:
            return []
        layers = self.encoder.layer_modules()
        return [p for m in list(layers)[-k:] for p in m.parameters()]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) if self.encoder is not None else []

    def apply_step(self, step: int) -> None:
        """The fine-tuning schedule at optimizer step `step`: the top k layers train from `after_step` on."""
        if self.cfg.finetune is None:
            return
        on = step >= self.cfg.finetune.after_step
        for p in self._unfreeze:
            p.requires_grad_(on)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        theirs = state_dict.get(prefix + "encoder_digest")
        if (
            theirs is not None
            and hasattr(self, "encoder_digest")
            and not torch.equal(theirs, self.encoder_digest)
        ):
            mine, ckpt = bytes(self.encoder_digest.tolist()).hex(), bytes(theirs.tolist()).hex()
            raise ValueError(
                f"model.source {self.cfg.source!r}: its weights (digest {mine}) are not those this checkpoint"
                f" was trained on ({ckpt}): the frozen encoder's embeddings would differ; point model.source "
                "at the weights of the run"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> HFEncoderModel:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # no dropout or masking inside the encoder: its output is a function of input
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:  # x: [B, F, samples per frame] -> [B, S, F, D]
            b, f, spf = x.shape
            rate = self.encoder.sampling_rate / spf
            h = encode(
                self.encoder, x.reshape(b, f * spf), f, rate, self.cfg.chunk_seconds, self.cfg.overlap_seconds
            )
        else:  # cached hidden states [B, F, S * D]
            b, f, _ = x.shape
            h = x.reshape(b, f, self.n_states, self.shape.width).transpose(1, 2)
        h = h.float()
        if self.layer_weights is not None:
            h = (torch.softmax(self.layer_weights, 0)[None, :, None, None] * h).sum(1)
        else:
            h = h[:, 0]  # one layer was selected (when encoding, or when caching)
        return self.head(h)
