"""Checkpoints from elsewhere, or damaged: refused by `a2b resume` and `a2b evaluate` with a message that
names the file and the keys; nothing in them is executed, nothing is trained on them.

The foreign files here carry a matching checksum in train_state.json (as a checkpoint assembled from
another run's files would), so it is the content check that refuses them, not the checksum. Damaged
files (one flipped byte) are refused by the checksum; a run directory then resumes from the newest
checkpoint that verifies. (test_state.py covers the state-level basics: truncated weights, a
half-written directory, a newer schema on a checkpoint directory, a pickle read by load_tensors.)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import xxhash
from _util import tiny_config
from safetensors.torch import load_file, save_file

from a2b_pipeline.checkpoint.directory import STATE_FILE, checkpoint_name, list_checkpoints
from a2b_pipeline.cli import main
from a2b_pipeline.state import SCHEMA_VERSION, TrainState
from a2b_pipeline.train import train

MARKER = Path("/tmp/a2b_faults_pickle_was_executed")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run with checkpoints at steps 2, 4 and 6 (EMA on, so three tensor files each)."""
    tmp = tmp_path_factory.mktemp("faults_ckpt")
    cfg = tiny_config(
        tmp,
        [
            "train.max_steps=6",
            "train.val_every_n_steps=6",
            "train.ema_decay=0.9",
            "checkpoint.every_n_steps=2",
            "checkpoint.keep_last=3",
        ],
    )
    state = train(TrainState.from_config(cfg, run_dir=tmp / "template"))
    assert state.status == "complete"
    assert [p.name for p in list_checkpoints(state.run_dir)] == [checkpoint_name(s) for s in (2, 4, 6)]
    return Path(state.run_dir)


@pytest.fixture
def run(tmp_path: Path, template: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(template, dst, symlinks=True)
    return dst


def _rewrite(ckpt: Path, name: str, blob: bytes) -> None:
    """Replace a file of a checkpoint and record its checksum, as a foreign but self-consistent one would
    (a bare sha256, as the first checkpoints of schema 1 recorded: both kinds are accepted)."""
    (ckpt / name).write_bytes(blob)
    state_file = ckpt / STATE_FILE
    raw = json.loads(state_file.read_text())
    raw["checkpoint_state"]["files"][name] = hashlib.sha256(blob).hexdigest()
    state_file.write_text(json.dumps(raw))


def _edit_tensors(ckpt: Path, name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(ckpt / name)
    edit(tensors)
    tmp = ckpt / ".edited"
    save_file(tensors, tmp)
    blob = tmp.read_bytes()
    tmp.unlink()
    _rewrite(ckpt, name, blob)


def _commands(ckpt: Path, file: str) -> list[tuple[str, ...]]:
    """The commands that read `file`: resume reads all three; evaluate reads the EMA weights when the
    checkpoint has them, so for model.safetensors the state is made to say "no EMA" (as in a run without)."""
    if file == "model.safetensors":
        raw = json.loads((ckpt / STATE_FILE).read_text())
        raw["model_state"]["ema_path"] = None
        (ckpt / STATE_FILE).write_text(json.dumps(raw))
    if file == "optimizer.safetensors":
        return [("resume", str(ckpt))]
    return [("resume", str(ckpt)), ("evaluate", str(ckpt))]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def _snapshot(run: Path) -> dict[str, float]:
    return {p.name: (p / STATE_FILE).stat().st_mtime for p in list_checkpoints(run)}


# ---- foreign weights: missing keys, extra keys, wrong shapes ----


def _drop(t: dict[str, torch.Tensor]) -> None:
    del t["head.bias"]
    del t["gru.weight_hh_l0"]


def _add(t: dict[str, torch.Tensor]) -> None:
    t["adapter.weight"] = torch.zeros(3, 3)
    t["head.scale"] = torch.ones(1)


def _reshape(t: dict[str, torch.Tensor]) -> None:
    t["head.weight"] = torch.zeros(2, 32)  # a model with hidden 32, not 8


WEIGHT_EDITS = [
    (_drop, r"missing keys \['gru.weight_hh_l0', 'head.bias'\]"),
    (_add, r"unexpected keys \['adapter.weight', 'head.scale'\]"),
    (_reshape, r"wrong shapes \['head.weight: \(2, 32\) vs \(2, 8\)'\]"),
]


@pytest.mark.parametrize(("edit", "named"), WEIGHT_EDITS, ids=["missing", "extra", "shape"])
@pytest.mark.parametrize("file", ["model.safetensors", "ema.safetensors"])
def test_foreign_weights_refused_by_resume_and_evaluate(
    run: Path, capsys: pytest.CaptureFixture[str], edit: Callable, named: str, file: str
) -> None:
    import re

    ckpt = run / checkpoint_name(6)
    _edit_tensors(ckpt, file, edit)
    commands = _commands(ckpt, file)
    before = _snapshot(run)
    for args in commands:
        code, err = _cli(capsys, *args)
        assert code == 1, (args, err)
        assert f"{ckpt}/{file} does not fit model ConvGRU" in err, (args, err)
        assert re.search(named, err), (args, err)
        assert "Traceback" not in err
    assert _snapshot(run) == before, "nothing may be trained or written from a refused checkpoint"


def test_foreign_optimizer_tensors_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run / checkpoint_name(4)
    names = sorted(load_file(ckpt / "optimizer.safetensors"))
    moment = next(n for n in names if n.endswith(".exp_avg"))

    def reshape(t: dict[str, torch.Tensor]) -> None:
        t[moment] = torch.zeros(7)
        t["999.exp_avg"] = torch.zeros(1)

    _edit_tensors(ckpt, "optimizer.safetensors", reshape)
    before = _snapshot(run)
    code, err = _cli(capsys, "resume", str(ckpt))
    assert code == 1, err
    assert f"{ckpt}/optimizer.safetensors does not fit the optimizer" in err, err
    assert "999.exp_avg" in err and f"{moment}: (7,)" in err, err
    assert _snapshot(run) == before


# ---- a newer schema ----


def _newer(ckpt: Path) -> None:
    raw = json.loads((ckpt / STATE_FILE).read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    raw["a_field_from_the_future"] = {"x": 1}
    (ckpt / STATE_FILE).write_text(json.dumps(raw))


def test_newer_schema_refused_by_resume_and_evaluate(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run / checkpoint_name(6)
    _newer(ckpt)
    before = _snapshot(run)
    for args in (
        ("resume", str(ckpt)),
        ("evaluate", str(ckpt)),
        ("resume", str(run)),
        ("evaluate", str(run)),
    ):
        code, err = _cli(capsys, *args)
        assert code == 1, (args, err)
        assert f"schema_version {SCHEMA_VERSION + 1} is newer than this a2b_pipeline understands" in err, err
    # A run directory whose newest checkpoint is newer is not resumed from an older one: that would
    # train over (and replace) what the newer version wrote.
    assert _snapshot(run) == before


# ---- a pickle planted where a weights file should be ----


class _Payload:
    def __reduce__(self):
        return (MARKER.touch, ())


def _pickle_blob(kind: str) -> bytes:
    if kind == "torch.save":
        import io

        buf = io.BytesIO()
        torch.save({"head.weight": torch.zeros(2, 8), "evil": _Payload()}, buf)
        return buf.getvalue()
    return pickle.dumps({"head.weight": _Payload()})


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("file", ["model.safetensors", "optimizer.safetensors", "ema.safetensors"])
def test_planted_pickle_refused_and_never_executed(
    run: Path, capsys: pytest.CaptureFixture[str], kind: str, file: str
) -> None:
    MARKER.unlink(missing_ok=True)
    ckpt = run / checkpoint_name(6)
    _rewrite(ckpt, file, _pickle_blob(kind))
    commands = _commands(ckpt, file)
    before = _snapshot(run)
    for args in commands:
        code, err = _cli(capsys, *args)
        assert code == 1, (args, err)
        assert f"{ckpt}/{file}: not a safetensors file" in err, (args, err)
    assert not MARKER.exists(), "the pickle was executed"
    assert _snapshot(run) == before


def test_planted_pickle_as_metric_history_is_refused_before_training_resumes(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    MARKER.unlink(missing_ok=True)
    ckpt = run / checkpoint_name(4)  # mid-run: resuming it would train on
    _rewrite(ckpt, "metrics.jsonl", _pickle_blob("pickle"))
    before = _snapshot(run)
    code, err = _cli(capsys, "resume", str(ckpt))
    assert code == 1 and f"{ckpt}/metrics.jsonl, line 1" in err, err
    assert not MARKER.exists(), "the pickle was executed"
    assert _snapshot(run) == before  # refused before a step was trained or a checkpoint written


def test_pickle_with_stale_checksum_is_skipped_and_run_resumes_from_older(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    MARKER.unlink(missing_ok=True)
    newest = run / checkpoint_name(6)
    (newest / "model.safetensors").write_bytes(_pickle_blob("torch.save"))  # checksum not updated
    code, err = _cli(capsys, "evaluate", str(newest))
    assert code == 1 and f"{newest}/model.safetensors: checksum mismatch" in err, err
    assert TrainState.from_checkpoint(run).global_step == 4
    assert not MARKER.exists()


# ---- checksums: every file is listed, a flipped byte in any of them is caught ----


@pytest.mark.parametrize(
    "file", ["model.safetensors", "optimizer.safetensors", "ema.safetensors", "metrics.jsonl"]
)
def test_flipped_byte_refused_and_run_resumes_from_newest_valid(
    run: Path, capsys: pytest.CaptureFixture[str], file: str
) -> None:
    for ckpt in list_checkpoints(run):  # every tensor file of every checkpoint is listed with its checksum
        state = json.loads((ckpt / STATE_FILE).read_text())
        listed = state["checkpoint_state"]["files"]
        on_disk = sorted(p.name for p in ckpt.iterdir() if p.name != STATE_FILE)
        tensors = ["ema.safetensors", "model.safetensors", "optimizer.safetensors"]
        assert sorted(listed) == on_disk == ["ema.safetensors", "metrics.jsonl", *tensors[1:]]
        for name, digest in listed.items():
            assert digest == "xxh3_128:" + xxhash.xxh3_128((ckpt / name).read_bytes()).hexdigest()

    newest = run / checkpoint_name(6)
    blob = bytearray((newest / file).read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit, deep in the tensor data: still parses as safetensors
    (newest / file).write_bytes(bytes(blob))
    code, err = _cli(capsys, "resume", str(newest))
    assert code == 1 and f"{newest}/{file}: checksum mismatch" in err, err

    # the run directory falls back to step 4, and resuming from there finishes the run
    assert TrainState.from_checkpoint(run).global_step == 4
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(run.resolve())
    done = TrainState.from_checkpoint(run)
    assert done.status == "complete" and done.global_step == 6
