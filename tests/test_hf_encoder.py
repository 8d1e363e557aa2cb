"""`hf_encoder`: pretrained audio encoders from transformers, on tiny randomly initialised ones saved to a
directory (tests/tiny_encoders.py; nothing is downloaded): frozen embeddings cached once, every encoder
family trains and predicts, fine-tuning schedules resume bit for bit, a hub id that can't be reached fails
naming the model and the way out."""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch
from _util import REPO, run_cli, tiny_config
from tiny_encoders import save_tiny_encoder

from a2b_pipeline.checkpoint.directory import checkpoint_name
from a2b_pipeline.checkpoint.store import load_tensors
from a2b_pipeline.configs import ConfigError, config_from_dict, load_config
from a2b_pipeline.data import feature_cache
from a2b_pipeline.data.pipeline import prepare_data
from a2b_pipeline.evaluation.evaluate import evaluate_checkpoint
from a2b_pipeline.evaluation.predict import Predictor
from a2b_pipeline.models import build_model, model_io
from a2b_pipeline.models import hf_encoder as hf
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoders")


def _encoder(encoders: Path, kind: str) -> str:
    path = encoders / kind
    if not path.exists():
        save_tiny_encoder(kind, path)
    return str(path)


def _raw(tmp_path: Path, source: str, **model: Any) -> dict[str, Any]:
    """One small synthetic dataset (4 listeners x 2 recordings x 16 s), 4 s windows, a tiny head."""
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"] = raw["data"]["datasets"][:1]
    raw["data"].update(window_seconds=4, hop_seconds=2)
    raw["model"] = {
        "name": "hf_encoder",
        "source": source,
        "chunk_seconds": 3.0,
        "overlap_seconds": 0.5,
        "head": {"name": "conv_gru", "conv_channels": 8, "hidden": 8, "dropout": 0.0},
        **model,
    }
    raw["train"].update(max_steps=4, val_every_n_steps=4, log_every_n_steps=1)
    return raw


def _train(raw: dict[str, Any], **hooks: Any) -> TrainState:
    state = train(TrainState.from_config(config_from_dict(raw)), **hooks)
    assert state.status == "complete", state.message
    return state


def _weights(state: TrainState, step: int) -> dict[str, torch.Tensor]:
    path = Path(state.run_dir) / checkpoint_name(step)
    return load_tensors(path, "model.safetensors", TrainState.from_checkpoint(path))


def test_frozen_embeddings_are_computed_once_and_cached(tmp_path: Path, encoders: Path) -> None:
    raw = _raw(tmp_path, _encoder(encoders, "wav2vec2"))
    raw["train"].update(max_steps=None, num_epochs=2)
    cfg = config_from_dict(raw)
    feature_cache.reset_stats()
    hf.STATS["encoder_chunks"] = 0
    prepare_data(cfg)
    first = hf.STATS["encoder_chunks"]
    # 8 recordings of 16 s in chunks of 3 s with 0.5 s overlap: 7 chunks each
    assert first == 8 * math.ceil(16 / 2.5) and feature_cache.STATS["inputs_miss"] == 8

    # a new process would find them on disk: the training run (2 epochs) and a second experiment on the
    # same audio with another head never run the encoder
    feature_cache.forget_memory()
    state = _train(raw)
    assert state.epoch >= 1  # the second epoch ran
    other = _raw(tmp_path, raw["model"]["source"], head={"name": "tcn", "channels": 8, "levels": 2})
    _train(other)
    assert hf.STATS["encoder_chunks"] == first
    assert feature_cache.STATS["inputs_hit"] >= 8 and feature_cache.STATS["inputs_miss"] == 8

    # the checkpoint holds the head and the layer weights, not the frozen encoder
    weights = load_tensors(state.last_checkpoint, "model.safetensors", state)
    assert "layer_weights" in weights and not any(k.startswith("encoder.") for k in weights)
    assert not torch.equal(weights["layer_weights"], torch.zeros(3))  # the weighted sum learns

    # another layer selection is another cache entry
    prepare_data(config_from_dict(_raw(tmp_path, raw["model"]["source"], layer=-1)))
    assert feature_cache.STATS["inputs_miss"] == 16 and hf.STATS["encoder_chunks"] == 2 * first

    metrics = evaluate_checkpoint(state.last_checkpoint, "test")
    assert all(math.isfinite(v) for v in metrics.values())


def test_cache_key_holds_model_revision_weights_and_layer(tmp_path: Path, encoders: Path) -> None:
    source = _encoder(encoders, "wav2vec2")
    base = config_from_dict(_raw(tmp_path, source)).model
    settings = hf.cache_settings(base, 50.0)
    assert settings["model"] == source and settings["layer"] == "weighted"
    assert "revision" in settings and len(settings["weights"]) == 32
    # other weights under the same directory name: another digest
    other = save_tiny_encoder("wav2vec2", tmp_path / "retrained", seed=1)
    assert (
        hf.cache_settings(base.model_copy(update={"source": str(other)}), 50.0)["weights"]
        != settings["weights"]
    )


@pytest.mark.parametrize("kind", ["hubert", "ast", "whisper", "clap"])
def test_each_encoder_family_trains_evaluates_predicts_and_finetunes(
    tmp_path: Path, encoders: Path, kind: str
) -> None:
    layer: Any = -1 if kind == "clap" else "weighted"
    overlap = 0.2 if kind == "ast" else 0.5  # AST takes 2.56 s at a time: fewer chunks
    raw = _raw(tmp_path, _encoder(encoders, kind), layer=layer, overlap_seconds=overlap)
    state = _train(raw)
    losses = [m.value for m in state.metric_history if m.name == "train/loss"]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(v) for v in evaluate_checkpoint(state.last_checkpoint, "test").values())
    wav = sorted((tmp_path / "synA").rglob("*.wav"))[0]
    y, _, seconds = Predictor(state.last_checkpoint).predict(wav)
    assert y.shape == (math.ceil(seconds * 4.0 - 1e-9), 2) and torch.isfinite(torch.as_tensor(y)).all()

    # fine-tuned: the top layer of the family's own layer stack trains, the ones below stay as loaded
    raw = _raw(
        tmp_path, raw["model"]["source"], layer=layer, overlap_seconds=overlap, finetune={"unfreeze_top_k": 1}
    )
    raw["train"].update(max_steps=2)
    raw["checkpoint"]["dir"] = str(tmp_path / "finetuned")
    tuned = _train(raw)
    cfg = config_from_dict(raw)
    model = build_model(cfg.model, model_io(cfg))  # as loaded from the directory
    top = {id(p) for p in model.encoder.layer_modules()[-1].parameters()}
    top_names = {name for name, p in model.named_parameters() if id(p) in top}
    after = load_tensors(tuned.last_checkpoint, "model.safetensors", tuned)
    changed = {
        k for k, v in model.state_dict().items() if k.startswith("encoder.") and not torch.equal(v, after[k])
    }
    assert changed and changed <= top_names, sorted(changed - top_names)[:5]


def test_finetune_resumes_bit_exactly_in_the_middle_of_an_unfreeze_schedule(
    tmp_path: Path, encoders: Path
) -> None:
    source = _encoder(encoders, "wav2vec2")
    finetune = {"unfreeze_top_k": 1, "after_step": 3, "lr": 3e-3, "warmup_steps": 3}
    raw = _raw(tmp_path, source, finetune=finetune, encoder_precision="bf16")
    raw["train"].update(max_steps=8, val_every_n_steps=4)
    raw["checkpoint"].update(every_n_steps=2, keep_last=10, dir=str(tmp_path / "straight"))

    dtypes: list[torch.dtype] = []

    def watch(model: torch.nn.Module, state: TrainState) -> None:
        model.encoder.net.register_forward_hook(lambda m, i, o: dtypes.append(o.last_hidden_state.dtype))
        model.head.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))

    straight = _train(raw, model_hooks=[watch])
    assert set(dtypes) == {torch.bfloat16, torch.float32}  # the encoder in bf16, the head in fp32

    w2, w4, w8 = (_weights(straight, s) for s in (2, 4, 8))
    top = [k for k in w2 if k.startswith("encoder.net.encoder.layers.1.")]
    below = [k for k in w2 if k.startswith("encoder.net.encoder.layers.0.")]
    assert top and below
    assert all(torch.equal(w2[k], w4[k]) for k in below)
    assert any(not torch.equal(w2[k], w4[k]) for k in top)  # unfrozen at step 3
    assert all(torch.equal(w2[k], w8[k]) for k in below)  # only the top layer trains
    groups = TrainState.from_checkpoint(straight.last_checkpoint).optimizer_state.param_groups
    assert [g.get("name") for g in groups] == [None, "encoder"]

    # crash in step 6 (after the checkpoint of step 4, in the warm-up of the encoder's lr), resume
    raw["checkpoint"]["dir"] = str(tmp_path / "crashed")

    def crash(model: torch.nn.Module, state: TrainState) -> None:
        def boom(m: Any, i: Any) -> None:
            if state.global_step == 5:
                raise RuntimeError("simulated crash")

        model.head.register_forward_pre_hook(boom)

    fresh = TrainState.from_config(config_from_dict(raw))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(fresh, model_hooks=[crash])
    crashed = TrainState.from_checkpoint(fresh.run_dir)
    assert crashed.global_step == 4
    resumed = train(crashed)
    assert resumed.global_step == 8
    a, b = _weights(straight, 8), _weights(resumed, 8)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = load_tensors(straight.last_checkpoint, "optimizer.safetensors", straight)
    opt_b = load_tensors(resumed.last_checkpoint, "optimizer.safetensors", resumed)
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)


def test_a2b_predict_with_an_encoder_config(tmp_path: Path, encoders: Path) -> None:
    state = _train(_raw(tmp_path, _encoder(encoders, "wav2vec2")))
    wav = sorted((tmp_path / "synA").rglob("*.wav"))[0]
    out = tmp_path / "out"
    run_cli("predict", str(state.run_dir), str(wav), "--out", str(out))
    with (out / f"{wav.stem}.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time", "eda_z", "hr_z"]
    assert len(rows) - 1 == math.ceil(sf.info(wav).duration * 4.0 - 1e-9)


def test_unreachable_hub_id_names_the_model_and_the_way_out(tmp_path: Path) -> None:
    raw = _raw(tmp_path, "facebook/wav2vec2-base", revision="0" * 40)
    cfg = config_from_dict(raw)
    with pytest.raises(hf.EncoderUnavailableError) as err:
        build_model(cfg.model, model_io(cfg))
    msg = str(err.value)
    assert "facebook/wav2vec2-base" in msg and "--local-dir" in msg and "model.source" in msg


@pytest.mark.parametrize("name", ["hf_wav2vec2", "hf_mert", "hf_clap"])
def test_shipped_encoder_configs_pin_a_revision_and_name_the_model_offline(name: str) -> None:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.name == "hf_encoder" and cfg.model.revision and len(cfg.model.revision) == 40
    assert cfg.model.trust_remote_code == (name == "hf_mert")  # only MERT needs its repository's code
    with pytest.raises(hf.EncoderUnavailableError, match=re.escape(cfg.model.source)):
        build_model(cfg.model, model_io(cfg))


def test_a_checkpoint_refuses_other_frozen_encoder_weights(tmp_path: Path, encoders: Path) -> None:
    source = tmp_path / "enc"
    save_tiny_encoder("wav2vec2", source)
    state = _train(_raw(tmp_path, str(source)))
    shutil.rmtree(source)
    save_tiny_encoder("wav2vec2", source, seed=1)  # other weights under the same directory
    hf._SHARED.clear()  # a new process
    with pytest.raises(ValueError, match="not those this checkpoint was trained on"):
        Predictor(state.last_checkpoint)


def test_a_hub_id_needs_a_pinned_revision(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pin `revision`"):
        config_from_dict(_raw(tmp_path, "m-a-p/MERT-v1-95M", trust_remote_code=True))


@pytest.mark.slow
def test_dagster_graph_materializes_an_encoder_experiment(
    tmp_path: Path, encoders: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from a2b_pipeline.cli.demo import run_demo

    monkeypatch.setenv("A2B_EVAL_FLOOR", "-1")  # 4 steps of a random encoder: the graph is under test
    raw = _raw(tmp_path, _encoder(encoders, "wav2vec2"))
    raw["name"] = "enc"
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "enc.yaml").write_text(yaml.safe_dump(raw))
    with open(tmp_path / "demo.out", "w") as out:
        code = run_demo(
            tmp_path / "home",
            tmp_path / "root",
            configs_dir=configs,
            experiment="enc",
            tracking_mode="disabled",
            device="cpu",
            out=out,
        )
    assert code == 0, (tmp_path / "demo.out").read_text()[-3000:]


def test_long_recordings_are_encoded_in_bounded_overlapping_chunks(tmp_path: Path, encoders: Path) -> None:
    cfg = config_from_dict(_raw(tmp_path, _encoder(encoders, "wav2vec2"))).model  # 3 s chunks, 0.5 s overlap
    enc = hf.shared_encoder(cfg)
    lengths: list[int] = []
    hook = enc.net.register_forward_pre_hook(
        lambda m, args, kw: lengths.append(kw["input_values"].shape[-1]), with_kwargs=True
    )
    try:
        torch.manual_seed(0)
        wave = torch.randn(60 * 16000) * 0.1
        out = hf.recording_inputs(cfg, wave, 3000, 50.0)  # a minute of audio, 50 frames/s
    finally:
        hook.remove()
    assert out.shape == (3000, 3 * 16)  # 3 hidden states x 16 wide per frame
    assert len(lengths) == math.ceil(60 / 2.5) and max(lengths) <= 3 * 16000  # memory: one chunk at a time
    # the first chunk's frames are that chunk encoded alone: the stitching keeps each chunk's own frames
    first = hf.encode(enc, wave[None, : 3 * 16000], 150, 50.0, 3.0, 0.5)[0]
    assert torch.equal(out[:100], first.permute(1, 0, 2).reshape(150, -1)[:100].half())


def test_encoders_sweep_compares_log_mel_and_encoders_on_the_same_split() -> None:
    from a2b_pipeline.experiments.sweeps import sweep_experiments

    exps = [e for e in sweep_experiments(REPO / "configs").values() if e.sweep == "encoders"]
    models = {e.name.removeprefix("encoders."): e.config.model for e in exps}
    assert models["logmel"].name == "conv_gru"
    assert {m.source for k, m in models.items() if k != "logmel"} == {
        "facebook/wav2vec2-base",
        "m-a-p/MERT-v1-95M",
        "laion/clap-htsat-unfused",
    }
    assert models["wav2vec2-ft"].finetune is not None and models["wav2vec2"].finetune is None
    # the split is a function of the data settings and the seed: one for all
    assert len({(e.config.seed, e.config.data.model_dump_json()) for e in exps}) == 1


def test_unfreezing_later_is_refused_under_ddp(tmp_path: Path, encoders: Path) -> None:
    from a2b_pipeline.train import check_schedules_fit

    source = _encoder(encoders, "wav2vec2")
    later = config_from_dict(_raw(tmp_path, source, finetune={"unfreeze_top_k": 1, "after_step": 5}))
    with pytest.raises(ConfigError, match="model.finetune.after_step=5"):
        check_schedules_fit(later, world_size=2)
    check_schedules_fit(later, world_size=1)
    from_start = config_from_dict(_raw(tmp_path, source, finetune={"unfreeze_top_k": 1}))
    check_schedules_fit(from_start, world_size=2)
    model = build_model(from_start.model, model_io(from_start))  # trainable when DDP would wrap it
    assert any(p.requires_grad for p in model.encoder.parameters())
