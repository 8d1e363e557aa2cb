"""Tiny randomly initialised Hugging Face audio encoders, saved with their feature extractors to a directory
(as `save_pretrained` writes a hub snapshot): what `model.source` of an `hf_encoder` config points at in
tests. Nothing is downloaded: each is built from its config class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# hidden 16, 1-2 layers: a forward pass over seconds of audio takes milliseconds
_ATTN = {"num_attention_heads": 2, "intermediate_size": 32}


def _ssl(config_cls: str, model_cls: str) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        import transformers as tf

        conf = getattr(tf, config_cls)(
            hidden_size=16,
            num_hidden_layers=2,
            conv_dim=(16, 16),
            conv_stride=(10, 32),  # 320 samples per frame: 50 frames per second at 16 kHz
            conv_kernel=(10, 32),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            mask_time_prob=0.0,
            **_ATTN,
        )
        fe = tf.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False)
        return getattr(tf, model_cls)(conf), fe

    return build


def _ast() -> tuple[Any, Any]:
    import transformers as tf

    conf = tf.ASTConfig(hidden_size=16, num_hidden_layers=1, max_length=256, num_mel_bins=32, **_ATTN)
    fe = tf.ASTFeatureExtractor(num_mel_bins=32, max_length=256, sampling_rate=16000)
    return tf.ASTModel(conf), fe


def _whisper() -> tuple[Any, Any]:
    import transformers as tf

    conf = tf.WhisperConfig(
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=16,
        max_source_positions=100,  # 2 s: the extractor below pads to chunk_length=2
        max_target_positions=16,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    fe = tf.WhisperFeatureExtractor(feature_size=16, chunk_length=2, sampling_rate=16000)
    return tf.WhisperModel(conf), fe


def _clap() -> tuple[Any, Any]:
    import transformers as tf

    audio = {
        "spec_size": 64,
        "window_size": 4,
        "num_mel_bins": 16,
        "depths": [1, 1],
        "num_heads": [1, 2],
        "patch_embeds_hidden_size": 8,
        "hidden_size": 16,
        "enable_fusion": False,
    }
    text = {
        "vocab_size": 32,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "max_position_embeddings": 40,
        **_ATTN,
    }
    conf = tf.ClapConfig(text_config=text, audio_config=audio, projection_dim=8)
    fe = tf.ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=16000,
        hop_length=160,
        max_length_s=1,
        fft_window_size=400,
        frequency_max=8000,
    )
    return tf.ClapModel(conf), fe


TINY = {
    "wav2vec2": _ssl("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": _ssl("HubertConfig", "HubertModel"),
    "ast": _ast,
    "whisper": _whisper,
    "clap": _clap,
}


def save_tiny_encoder(kind: str, path: Path, seed: int = 0) -> Path:
    """A tiny `kind` encoder and its feature extractor, saved under `path` (returned)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, fe = TINY[kind]()
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return path
