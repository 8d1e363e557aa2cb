"""Hardening (#16): what an attacker or a careless user can do with run directories, configs, checkpoints,
manifests and the environment, each through the real CLI or the real library on real files.

The trusted party is the config author; checkpoints, manifests and corpora from elsewhere are not (README,
"Security model").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from _util import A2B, REPO, http_server, longer_run, run_cli, start_training, wait_for, write_config

from a2b_pipeline.checkpoint.directory import checkpoint_name, list_checkpoints
from a2b_pipeline.state import TrainState

# ---- 1. one owner per run directory ----


def _wait_stopped(pid: int) -> None:
    """Until the kernel has really stopped the process (SIGSTOP is delivered asynchronously)."""
    import time

    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.01)


def test_second_trainer_in_a_run_directory_is_refused_and_a_crash_releases_it(tmp_path: Path) -> None:
    raw = longer_run(tmp_path)
    raw["train"].update(max_steps=30, val_every_n_steps=10)
    raw["checkpoint"].update(every_n_steps=5, keep_last=2)
    cfg = write_config(tmp_path, raw, "lock")
    run = tmp_path / "run"

    owner = start_training(cfg, run)
    try:
        wait_for(run / checkpoint_name(5), owner)
        os.kill(owner.pid, signal.SIGSTOP)  # the owner holds the directory while the others try
        _wait_stopped(owner.pid)
        before = sorted(p.name for p in run.iterdir())
        for args in (
            ("train", str(cfg), "--run-dir", str(run)),
            ("train", str(cfg), "--run-dir", str(run), "--fresh"),
            ("resume", str(run)),
        ):
            proc = run_cli(*args, check=False)
            assert proc.returncode == 2, (args, proc.stderr)
            assert f"run directory {run} is in use by pid {owner.pid} on host {socket.gethostname()}" in (
                proc.stderr
            ), proc.stderr
            assert "Traceback" not in proc.stderr
            assert sorted(p.name for p in run.iterdir()) == before, f"{args} touched the run directory"
        os.kill(owner.pid, signal.SIGCONT)
        _, err = owner.communicate(timeout=300)
        assert owner.returncode == 0, err[-3000:]
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGCONT)
            owner.kill()
            owner.wait()
    state = TrainState.from_checkpoint(run)
    assert state.status == "complete" and state.global_step == 30  # the owner lost nothing

    # A crash (SIGKILL) releases the directory; the next start cleans what the crash left.
    run2 = tmp_path / "run2"
    raw["train"]["max_steps"] = 20
    cfg2 = write_config(tmp_path, raw, "lock2")
    victim = start_training(cfg2, run2)
    try:
        wait_for(run2 / checkpoint_name(10), victim)
    finally:
        victim.kill()
        victim.wait()
    older, newest = list_checkpoints(run2)[-2:]
    step = int(newest.name.removeprefix("step_"))
    # debris of interrupted writes: a temporary checkpoint, a pointer temporary, a stale old copy, a
    # rewrite caught between its two renames (the newest step only exists as .old-step_*), a half prune
    (run2 / ".tmp-step_000000099-abcdef").mkdir()
    (run2 / ".tmp-step_000000099-abcdef" / "model.safetensors").write_bytes(b"half")
    os.symlink("step_000000099", run2 / ".last.tmp")
    shutil.copytree(older, run2 / f".old-{older.name}")
    os.replace(newest, run2 / f".old-{newest.name}")
    shutil.copytree(older, run2 / f".pruned-{older.name}")  # a prune killed while deleting its files
    (run2 / f".pruned-{older.name}" / "model.safetensors").unlink()
    proc = run_cli("resume", str(run2), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"step {step} of 20" in proc.stderr, proc.stderr[-3000:]  # resumed from the restored step
    assert sorted(p.name for p in run2.iterdir() if p.name.startswith(".")) == [".a2b-lock"]
    final = TrainState.from_checkpoint(run2)
    assert final.status == "complete" and final.global_step == 20


def test_lock_is_refused_in_process_too(tmp_path: Path) -> None:
    """A second process (here: a child python) is refused while this one holds the directory, and gets it
    the moment this one lets go."""
    from a2b_pipeline.checkpoint.lock import RunDirBusyError, hold_run_dir

    run = tmp_path / "run"
    probe = (
        "import sys\n"
        "from a2b_pipeline.checkpoint.lock import RunDirBusyError, hold_run_dir\n"
        "try:\n"
        f"    with hold_run_dir({str(run)!r}):\n"
        "        print('took it')\n"
        "except RunDirBusyError as e:\n"
        "    print(e)\n"
    )
    cmd = [A2B[0], "-c", probe]
    with hold_run_dir(run), hold_run_dir(run):  # reentrant in one process
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120).stdout
        assert f"in use by pid {os.getpid()}" in out, out
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120).stdout
    assert out.strip() == "took it"
    assert issubclass(RunDirBusyError, ValueError)


# ---- 2. the environment's WANDB_MODE wins over the config ----


def _online_config(tmp_path: Path):
    from a2b_pipeline.configs import config_from_dict

    raw = longer_run(tmp_path)
    raw["tracking"] = {"wandb_mode": "online", "project": "a2b-test"}
    return config_from_dict(raw)


def test_environment_wandb_mode_wins_over_the_config(tmp_path: Path, monkeypatch) -> None:
    from a2b_pipeline.training.tracking import Tracker

    # No key, and a server that isn't there: anything sent online would fail (or hang) here.
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    cfg = _online_config(tmp_path)

    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "disabled"
    run_dir.mkdir()
    tracker = Tracker(cfg, str(run_dir), None)
    assert tracker.mode == "disabled" and tracker.run is None and tracker.run_path is None
    assert list(run_dir.iterdir()) == []  # wandb never started: nothing written, nothing sent

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "offline"
    run_dir.mkdir()
    tracker = Tracker(cfg, str(run_dir), None)
    try:
        assert tracker.mode == "offline" and tracker.run is not None
        tracker.log({"train/loss": 1.0}, step=1)
    finally:
        tracker.finish()
    runs = sorted(p.name for p in (run_dir / "wandb").iterdir() if "run-" in p.name)
    assert runs and all(name.startswith("offline-run-") for name in runs), runs

    monkeypatch.setenv("WANDB_MODE", "bogus")
    try:
        Tracker(cfg, str(tmp_path), None)
    except ValueError as e:
        assert "WANDB_MODE='bogus'" in str(e)
    else:
        raise AssertionError("an unknown WANDB_MODE must not fall back to the config's online")


# ---- 4. a YAML alias bomb fails fast and small ----

BOMB = "\n".join(
    ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
)


def _limited(cmd: list[str], mem_bytes: int = 3 << 30) -> subprocess.CompletedProcess[str]:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120, preexec_fn=limit)


def test_yaml_alias_bomb_fails_fast_and_small(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "\n")
    assert bomb.stat().st_size < 2000  # expands to 9**9 strings
    for command in ("validate", "train"):
        proc = _limited([*A2B, command, str(bomb)])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"{bomb}: more than 100000 values once YAML aliases are expanded" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr) < 2000

    # the same document hidden in a --set value, and a recursive alias
    cfg = write_config(tmp_path, longer_run(tmp_path), "ok")
    flat = BOMB.replace("\n", ", ")
    proc = _limited([*A2B, "validate", str(cfg), "--set", f"tracking.tags={{{flat}}}"])
    assert proc.returncode == 2 and "more than 100000 values" in proc.stderr, proc.stderr[-2000:]
    loop = tmp_path / "loop.yaml"
    loop.write_text("data: &d {datasets: [*d]}\n")
    proc = _limited([*A2B, "validate", str(loop)])
    assert proc.returncode == 2 and "more than 100000 values" in proc.stderr, proc.stderr[-2000:]


def test_messages_about_huge_values_are_bounded() -> None:
    from pydantic import ValidationError

    from a2b_pipeline.configs import RunConfig, format_validation_error

    wide = ["x" * 10_000] * 10_000  # 100 MB if printed in full
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    try:
        RunConfig.model_validate({"data": wide, "name": deep})
    except ValidationError as e:
        text = format_validation_error(e, "c.yaml")
    assert len(text) < 2000 and "data" in text and "name" in text


# ---- 8. raw tracebacks become clear errors (the config side; checkpoints below) ----


def test_unusable_config_files_and_overrides_are_named(tmp_path: Path, capsys) -> None:
    from a2b_pipeline.cli import main

    cfg = write_config(tmp_path, longer_run(tmp_path), "run")
    not_yaml = "the value is not valid YAML"
    cases = {
        # a --set value that is not YAML
        ("validate", str(cfg), "--set", "train.max_steps=[1"): f"override 'train.max_steps=[1': {not_yaml}",
        ("train", str(cfg), "--set", "tracking.project={a"): f"override 'tracking.project={{a': {not_yaml}",
        # a config path that is a directory
        ("validate", str(tmp_path)): f"{tmp_path}: is a directory, not a config file",
        ("train", str(tmp_path)): f"{tmp_path}: is a directory, not a config file",
    }
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(cfg.read_bytes() + "# Gr\xfc\xdfe\n".encode("latin-1"))
    cases[("validate", str(latin1))] = f"{latin1}: not UTF-8 text"
    cases[("train", str(latin1))] = f"{latin1}: not UTF-8 text"
    # a model that validates field by field but can't be held in memory (built on the meta device to tell)
    huge = ("--set", "model.hidden=65536", "--set", "model.layers=64")
    cases[("validate", str(cfg), *huge)] = "model: conv_gru (model.conv_channels=16, model.hidden=65536"
    cases[("train", str(cfg), *huge)] = "for weights, gradients and optimizer state: more than the"
    for args, named in cases.items():
        code = main(list(args))
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert named in err, (args, err)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ["latin1.yaml", "run.yaml"], "a refused config still created files"


# ---- 7. credentials in URLs never reach a message, a log line or a record ----


REQUESTS: list[str] = []  # paths the test HTTP server was asked for


def _not_found_server() -> contextlib.AbstractContextManager[int]:
    """A real HTTP server on 127.0.0.1 that answers 404 to everything; yields its port."""

    def not_found(path: str) -> tuple[int, bytes]:
        REQUESTS.append(path)
        return 404, b""

    return http_server(not_found)


def _leaky_manifest(tmp_path: Path, port: int) -> tuple[Path, str]:
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16, seed=0
    )
    url = f"http://alice:s3cr3t@127.0.0.1:{port}/x.wav?X-Amz-Signature=deadbeef&v=1"
    rows = manifest.read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(","), strict=True))
    leak = {**first, "recording_id": "leak", "subject_id": "s_leak", "audio_path": url}
    manifest.write_text("\n".join([*rows, ",".join(leak[c] for c in header)]) + "\n")
    return manifest, url


def test_url_credentials_are_redacted_everywhere(tmp_path: Path, caplog) -> None:
    import logging

    from a2b_pipeline.configs import config_from_dict
    from a2b_pipeline.data.pipeline import prepare_data

    with _not_found_server() as port:
        manifest, url = _leaky_manifest(tmp_path, port)
        shown = url.replace("alice:s3cr3t@", "").replace("deadbeef", "REDACTED")
        raw = longer_run(tmp_path)
        raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
        raw["data"]["on_bad_recording"] = "skip"
        raw["data"]["url_schemes"] = [
            "http"
        ]  # allowed, so it is fetched (and fails): item 10 refuses it otherwise

        with caplog.at_level(logging.INFO):
            data = prepare_data(config_from_dict(raw))
        assert [s.reason for s in data.skipped if s.path == shown], data.skipped
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert shown in logged
        for text in (logged, repr(data.skipped)):
            assert "s3cr3t" not in text and "deadbeef" not in text

        # the CLI at DEBUG (libraries' own lines and tracebacks too), in both modes: a skip and an error name
        # the row and the redacted URL
        cfg = write_config(tmp_path, raw, "leak")
        skip = run_cli("-v", "train", str(cfg), "--run-dir", str(tmp_path / "run"), check=False)
        raw["data"]["on_bad_recording"] = "error"
        cfg = write_config(tmp_path, raw, "leak")
        error = run_cli("-v", "train", str(cfg), "--run-dir", str(tmp_path / "run2"), check=False)
    assert skip.returncode == 0 and shown in skip.stderr, skip.stderr[-3000:]
    assert error.returncode == 1 and shown in error.stderr and "row 9" in error.stderr, error.stderr[-3000:]
    for proc in (skip, error):
        assert "s3cr3t" not in proc.stderr + proc.stdout and "deadbeef" not in proc.stderr + proc.stdout
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes(), path


def test_manifest_field_over_the_csv_limit_is_named(tmp_path: Path, capsys) -> None:
    from a2b_pipeline.cli import main
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16, seed=0
    )
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3] + "," + "x" * 200_000  # a field past csv.field_size_limit() (131072)
    manifest.write_text("\n".join(lines) + "\n")
    raw = longer_run(tmp_path)
    raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
    raw["data"]["on_bad_recording"] = "error"
    cfg = write_config(tmp_path, raw, "error")
    code = main(["train", str(cfg), "--run-dir", str(tmp_path / "error")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: {manifest}, row 3: line 4: not a readable CSV row (field larger than field limit" in err
    # in skip mode only that row is skipped (#24): tests/test_hardening.py


# ---- 13. `a2b corpus --type` offers what it can do ----


def test_corpus_types_offered_are_the_ones_accepted(tmp_path: Path) -> None:
    from a2b_pipeline.data.corpora import names, scannable

    offered = scannable()
    assert set(offered) == {"hku956", "pmemo2019"} and set(names()) - set(offered) >= {
        "manifest",
        "synthetic",
    }
    help_text = run_cli("corpus", "--help").stdout
    assert "{" + ",".join(offered) + "}" in help_text
    for kind in ("manifest", "synthetic"):  # not offered: refused by the parser, naming the choices
        proc = run_cli("corpus", str(tmp_path), "--type", kind, check=False)
        assert proc.returncode == 2 and f"invalid choice: '{kind}'" in proc.stderr, proc.stderr
    for kind in offered:  # every offered type gets as far as reading the (missing) corpus
        proc = run_cli("corpus", str(tmp_path / "nothing"), "--type", kind, check=False)
        assert proc.returncode == 2 and "corpus root not found" in proc.stderr, proc.stderr
        assert "unknown corpus type" not in proc.stderr


# ---- 10. manifests and corpus roots confine what they name ----


def test_manifest_rows_stay_in_their_folder_and_urls_need_an_allowed_scheme(tmp_path: Path) -> None:
    from a2b_pipeline.configs import DataConfig, DatasetConfig
    from a2b_pipeline.data.corpora import list_recordings
    from a2b_pipeline.data.manifest import ManifestError
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16, seed=0
    )
    rows = manifest.read_text().splitlines()
    header = rows[0].split(",")
    first = dict(zip(header, rows[1].split(","), strict=True))
    secret = tmp_path / "secret.wav"  # a real file outside the corpus
    shutil.copy(manifest.parent / first["audio_path"], secret)
    (manifest.parent / "audio" / "link.wav").symlink_to(secret)
    REQUESTS.clear()
    with _not_found_server() as port:
        attacks = {
            "absolute": str(secret),
            "dotdot": "../secret.wav",
            "symlink": "audio/link.wav",
            "http": f"http://127.0.0.1:{port}/x.wav",
        }
        extra = [
            {**first, "recording_id": k, "subject_id": f"s_{k}", "audio_path": v} for k, v in attacks.items()
        ]
        manifest.write_text("\n".join([*rows, *(",".join(r[c] for c in header) for r in extra)]) + "\n")
        ds = DatasetConfig(name="wild", type="manifest", manifest=str(manifest))

        def data(**kw) -> DataConfig:
            return DataConfig(
                datasets=[ds], window_seconds=4, hop_seconds=2, **{"on_bad_recording": "skip", **kw}
            )

        listing = list_recordings(ds, data())
        assert len(listing.recordings) == 8 and {r.recording_id for r in listing.recordings}.isdisjoint(
            attacks
        )
        reasons = {s.row: s.reason for s in listing.skipped}
        assert len(reasons) == 4, reasons
        for row, (kind, value) in enumerate(attacks.items(), start=9):
            if kind == "http":
                assert "column 'audio_path': URL scheme 'http' is not allowed" in reasons[row], reasons[row]
            else:
                assert f"column 'audio_path': {value} is outside the manifest's folder" in reasons[row]
        with pytest.raises(
            ManifestError, match=r"row 9: column 'audio_path': .* outside the manifest's folder"
        ):
            list_recordings(ds, data(on_bad_recording="error"))
        assert REQUESTS == [], "a refused URL was fetched"

        # the config author can allow both explicitly
        allowed = list_recordings(ds, data(allow_outside_paths=True, url_schemes=["http"]))
        assert {r.recording_id for r in allowed.recordings} >= {"absolute", "dotdot", "symlink", "http"}


def test_corpus_root_symlinks_out_of_the_root_are_left_out(tmp_path: Path) -> None:
    from corpus_fixtures import write_pmemo2019_fixture

    from a2b_pipeline.data.corpora.pmemo2019 import scan_pmemo2019

    root = tmp_path / "PMEmo2019"
    write_pmemo2019_fixture(
        root, songs=3, subjects=2, seconds=6.0, missing_clip=False, missing_listener=False
    )
    clips = sorted((root / "chorus").iterdir())
    outside = tmp_path / "elsewhere.mp3"
    shutil.move(clips[0], outside)
    clips[0].symlink_to(outside)
    scan = scan_pmemo2019(str(root), on_bad="skip")
    assert not [r for r in scan.listing.recordings if Path(r.audio_path).name == clips[0].name]
    assert any("chorus clip missing" in s.reason for s in scan.listing.skipped), scan.listing.skipped
    inside = root / "chorus" / "inside.mp3"  # a link that stays in the root is an ordinary file
    inside.symlink_to(clips[1])
    assert "chorus/inside.mp3" in scan_pmemo2019(str(root), on_bad="skip").files


def test_data_root_confines_relative_checkpoint_and_cache_dirs(tmp_path: Path) -> None:
    from a2b_pipeline.configs import ConfigError, config_from_dict
    from a2b_pipeline.defs.resources import ExperimentStore

    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    store = ExperimentStore(data_root=str(root), configs_dir=str(tmp_path))
    raw = longer_run(tmp_path)

    def rebased(**data_and_ckpt: str):
        r = {**raw, "data": {**raw["data"]}, "checkpoint": {**raw["checkpoint"]}}
        for key, value in data_and_ckpt.items():
            section, name = key.split("__")
            r[section][name] = value
        return store.rebase(config_from_dict(r))

    for key, value, field in (
        ("checkpoint__dir", "../escape", "checkpoint.dir"),
        ("checkpoint__dir", "link/runs", "checkpoint.dir"),
        ("data__cache_dir", "inside/../../cache", "data.cache_dir"),
        ("data__cache_dir", "link", "data.cache_dir"),
    ):
        with pytest.raises(ConfigError, match=f"{field}: {value} leads outside the data root"):
            rebased(**{key: value})
    assert rebased(checkpoint__dir="inside/runs").checkpoint.dir == str(root / "inside" / "runs")
    assert rebased(checkpoint__dir=str(tmp_path / "abs")).checkpoint.dir == str(tmp_path / "abs")  # explicit
    allowed = rebased(checkpoint__dir="../escape", data__allow_outside_paths=True)
    assert allowed.checkpoint.dir == str(tmp_path / "escape")


# ---- 8 and 11: signal files that can't be a signal table are named, not parsed into gigabytes ----


def test_signal_csv_over_the_csv_limit_or_on_one_huge_line_is_a_bad_recording(tmp_path: Path) -> None:
    from a2b_pipeline.configs import config_from_dict
    from a2b_pipeline.data.pipeline import prepare_data
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "corpus", subjects=4, recordings_per_subject=2, seconds=16, seed=0
    )
    rows = [r.split(",") for r in manifest.read_text().splitlines()]
    col = rows[0].index("signal_path")
    huge_cell, one_line = (manifest.parent / rows[i][col] for i in (1, 2))
    huge_cell.write_text("time,eda,hr\n0," + "1" * 200_000 + ",1\n")  # a cell past csv.field_size_limit()
    one_line.write_text(",".join(["1.5"] * 500_000) + "\n")  # 2 MB on one line: 500 000 "columns"
    raw = longer_run(tmp_path)
    raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
    raw["data"]["on_bad_recording"] = "skip"
    data = prepare_data(config_from_dict(raw))
    reasons = {Path(s.path).name: s.reason for s in data.skipped}
    assert "not a readable CSV (field larger than field limit" in reasons[huge_cell.name], reasons
    assert "line 1 is 2000000 characters long: not a signal table" in reasons[one_line.name], reasons
    assert sum(len(v) for v in data.recordings["train"].values()) > 0


def test_a_long_signal_csv_is_parsed_in_memory_proportional_to_its_size() -> None:
    """Many rows: the cells become floats a block at a time (they were all strings at once first: ~23x
    the file's size in memory, 3.5 GB for a 300 MB file); the values come out as written, ragged rows and
    empty cells as NaN, and a bad cell far down is still named by line and column."""
    import tracemalloc

    import numpy as np

    from a2b_pipeline.data.recording import BadRecordingError
    from a2b_pipeline.data.signal_csv import BLOCK_ROWS, parse_signal_csv

    n = 50 * BLOCK_ROWS + 7  # ~3 MB
    values = np.round(np.random.default_rng(0).random(n), 6)
    text = "time,EDA\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values))
    tracemalloc.start()
    try:
        table = parse_signal_csv(text, "long.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(table["EDA"], values) and np.array_equal(table["time"], np.arange(n))
    assert peak < 6 * len(text), f"peak {peak / len(text):.1f}x the file's size"

    # headerless and ragged: the widest row, in a later block, sets the columns; shorter rows get NaN
    rows = ["1,2"] * (BLOCK_ROWS + 1) + ["3,4,5", "6,,7"]
    wide = parse_signal_csv("\n".join(rows) + "\n", "ragged.csv")
    assert sorted(wide) == ["0", "1", "2"] and np.isnan(wide["2"][0]) and wide["2"][-2:].tolist() == [5, 7]
    assert np.isnan(wide["1"][-1])
    bad = text.replace(f"\n{n - 3},", f"\n{n - 3},oops", 1)
    named = rf"bad.csv: line {n - 1}, column 'EDA': not a number \('oops0\.\d+'\)"
    with pytest.raises(BadRecordingError, match=named):
        parse_signal_csv(bad, "bad.csv")


def test_url_credentials_never_reach_dagster_metadata_or_records(tmp_path: Path) -> None:
    import yaml
    from dagster import AssetKey, DagsterInstance, materialize

    from a2b_pipeline.defs.assets import ASSETS, experiments
    from a2b_pipeline.defs.resources import ExperimentStore, QualityGate, TrainDevice, WandbTracking

    with _not_found_server() as port:
        manifest, url = _leaky_manifest(tmp_path, port)
        raw = longer_run(tmp_path)
        raw["name"] = "leaky"
        raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
        raw["data"]["on_bad_recording"] = "skip"
        configs = tmp_path / "configs"
        configs.mkdir()
        (configs / "leaky.yaml").write_text(yaml.safe_dump(raw))
        instance = DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(experiments.name, ["leaky"])
        result = materialize(
            ASSETS,
            instance=instance,
            resources={
                "store": ExperimentStore(data_root=str(tmp_path), configs_dir=str(configs)),
                "tracking": WandbTracking(mode="disabled"),
                "compute": TrainDevice(device="cpu"),
                "quality": QualityGate(metric="test/pearson", floor=-1.0),
            },
            partition_key="leaky",
            selection=[AssetKey("corpus_manifest")],
        )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    md = {k: str(v.value) for k, v in event.materialization.metadata.items()}
    assert "127.0.0.1" in md["skipped"] and "URL scheme 'http' is not allowed" in md["skipped"], md["skipped"]
    for run in instance.get_runs():
        for logged in instance.all_logs(run.run_id):
            assert "s3cr3t" not in repr(logged) and "deadbeef" not in repr(logged), logged
    records = [p for p in tmp_path.rglob("dagster/**/*") if p.is_file()]
    assert records
    for p in records:
        assert b"s3cr3t" not in p.read_bytes() and b"deadbeef" not in p.read_bytes(), p


# ---- 3, 5, 6, 9, 11 and 8: checkpoints from elsewhere ----


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from _util import finished_tiny_run

    return finished_tiny_run(tmp_path_factory.mktemp("security_ckpt"))


def _runs(tmp_path: Path, template: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        shutil.copytree(template, tmp_path / name, symlinks=True)
        out.append(tmp_path / name)
    return out


def _snapshot(run: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in run.rglob("*")
        if p.is_file()
    }


def test_symlinked_checkpoints_and_pointers_into_another_run_are_refused(
    tmp_path: Path, finished_run: Path, capsys
) -> None:
    from a2b_pipeline.cli import main

    mine, other = _runs(tmp_path, finished_run, "mine", "other")
    (mine / "step_000000008").symlink_to(other / "step_000000006")  # the newest "checkpoint" is another run's
    (mine / "last").unlink()
    (mine / "last").symlink_to(other / "step_000000006")
    (mine / "best").unlink()
    (mine / "best").symlink_to(other / "step_000000004")
    before = _snapshot(other)

    # a run directory falls back to its own newest valid checkpoint, as for a corrupt one
    state = TrainState.from_checkpoint(mine)
    assert state.global_step == 6 and Path(state.run_dir) == mine.resolve()
    # an entry or a pointer given directly is refused, naming the run it leads into, before anything is read
    for args in (
        ["resume", str(mine / "step_000000008")],
        ["resume", str(mine / "last")],
        ["evaluate", str(mine / "best")],
        ["evaluate", str(mine)],  # its `best` pointer
    ):
        code = main(args)
        err = capsys.readouterr().err
        assert code == 1, (args, err)
        assert f"leads out of its run directory {mine.resolve()}" in err and f"{other.resolve()}" in err, err
    assert main(["resume", str(mine)]) == 0  # its own checkpoints: a finished run, reported again
    capsys.readouterr()
    assert _snapshot(other) == before, "another run's directory was touched"


def _edit_state(ckpt: Path, edit) -> None:
    import json

    path = ckpt / "train_state.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_checkpoint_files_must_be_regular_files_inside_the_checkpoint(
    tmp_path: Path, finished_run: Path
) -> None:
    from a2b_pipeline.checkpoint.directory import CheckpointError

    (run,) = _runs(tmp_path, finished_run, "run")
    newest = run / "step_000000006"
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    depth = len(newest.resolve().parts) - 1
    traversal = "../" * depth + str(secret).lstrip("/")
    for name in (traversal, "/dev/zero", str(secret)):
        _edit_state(
            newest, lambda raw, n=name: raw["checkpoint_state"]["files"].update({n: "sha256:" + "0" * 64})
        )
        with pytest.raises(CheckpointError, match="not a plain file name inside the checkpoint"):
            TrainState.from_checkpoint(newest)
        assert TrainState.from_checkpoint(run).global_step == 4  # falls back to the newest valid one
        shutil.rmtree(newest)
        shutil.copytree(finished_run / newest.name, newest)
    # a listed file that is a symlink (to a device, or to a file elsewhere with the right digest) is refused
    (newest / "model.safetensors").unlink()
    (newest / "model.safetensors").symlink_to(finished_run / newest.name / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a regular file"):
        TrainState.from_checkpoint(newest)
    # /dev/zero named through the CLI: refused at once, not read forever
    _edit_state(newest, lambda raw: raw["checkpoint_state"]["files"].update({"zero": "sha256:" + "0" * 64}))
    (newest / "zero").symlink_to("/dev/zero")
    proc = subprocess.run(
        [*A2B, "evaluate", str(newest)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 1 and "not a regular file" in proc.stderr, proc.stderr[-2000:]


def test_an_edited_config_in_a_checkpoint_is_refused(tmp_path: Path, finished_run: Path) -> None:
    from a2b_pipeline.checkpoint.directory import CheckpointError
    from a2b_pipeline.cli import main

    (run,) = _runs(tmp_path, finished_run, "run")
    elsewhere = tmp_path / "attacker"

    def edit(raw: dict) -> None:
        raw["config"]["train"]["max_steps"] = 8  # so that a resume would train (and write)
        raw["config"]["data"]["cache_dir"] = str(elsewhere / "cache")
        for ds in raw["config"]["data"]["datasets"]:
            ds["root"] = str(elsewhere / ds["name"])

    _edit_state(run / "step_000000006", edit)
    with pytest.raises(CheckpointError, match="config_hash .* does not match the config it holds"):
        TrainState.from_checkpoint(run / "step_000000006")
    assert main(["resume", str(run)]) == 0  # from step 4, its own config: back to step 6
    assert not elsewhere.exists(), "a checkpoint's edited config made the run write elsewhere"
    state = TrainState.from_checkpoint(run)
    assert state.global_step == 6 and state.config.train.max_steps == 6


def test_huge_or_deep_state_files_are_refused_and_older_checkpoints_used(
    tmp_path: Path, finished_run: Path
) -> None:
    from a2b_pipeline.checkpoint.directory import CheckpointError

    (run,) = _runs(tmp_path, finished_run, "run")
    newest = run / "step_000000006"
    state_file = newest / "train_state.json"
    text = state_file.read_text()
    with open(state_file, "a") as f:  # valid JSON still (trailing white space), 65 MB
        f.write(" " * (65 << 20))
    with pytest.raises(CheckpointError, match="larger than 64 MiB"):
        TrainState.from_checkpoint(newest)
    assert TrainState.from_checkpoint(run).global_step == 4
    state_file.write_text(text[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        TrainState.from_checkpoint(newest)
    assert TrainState.from_checkpoint(run).global_step == 4


def test_disk_full_while_writing_a_checkpoint_is_named(tmp_path: Path) -> None:
    import resource

    from a2b_pipeline.configs import config_from_dict
    from a2b_pipeline.data.pipeline import prepare_data

    raw = longer_run(tmp_path)
    raw["model"]["hidden"] = 256  # weights of ~0.8 MB: more than the file size limit below
    raw["train"]["max_steps"] = 4
    cfg = write_config(tmp_path, raw, "full")
    prepare_data(config_from_dict(raw))  # corpora and feature cache written here, before the limit

    def small_files() -> None:  # every file the child writes is cut at 300 KB: a full disk, for it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    run = tmp_path / "run"
    proc = subprocess.run(
        [*A2B, "train", str(cfg), "--run-dir", str(run)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        preexec_fn=small_files,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"error: {run}/step_" in proc.stderr and "the checkpoint could not be written" in proc.stderr
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not [p for p in run.iterdir() if p.name.startswith((".tmp-", "step_"))]


def test_corpus_song_links_need_an_allowed_url_scheme(tmp_path: Path) -> None:
    import csv

    from corpus_fixtures import write_hku956_fixture

    from a2b_pipeline.configs import DataConfig, DatasetConfig
    from a2b_pipeline.data.corpora import list_recordings

    root = tmp_path / "HKU956"
    write_hku956_fixture(root, participants=2, songs_per_participant=2, seconds=6.0, missing_eda=False)
    links = root / "2. original_song_audio.csv"
    rows = list(csv.DictReader(links.open()))
    REQUESTS.clear()
    with _not_found_server() as port:
        with open(links, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["song_id", "link"])
            w.writeheader()
            w.writerows(
                {"song_id": r["song_id"], "link": f"http://127.0.0.1:{port}/{r['song_id']}.mp3"} for r in rows
            )
        ds = DatasetConfig(name="hku", type="hku956", root=str(root))

        def data(**kw) -> DataConfig:
            return DataConfig(datasets=[ds], window_seconds=4, hop_seconds=2, on_bad_recording="skip", **kw)

        listing = list_recordings(ds, data())
        assert listing.recordings == [] and len(listing.skipped) >= 4
        assert all(
            "URL scheme 'http' is not allowed" in s.reason for s in listing.skipped if "127.0.0.1" in s.path
        )
        assert REQUESTS == [], "a song link was fetched"
        allowed = list_recordings(ds, data(url_schemes=["http"]))
        assert not [s for s in allowed.skipped if "is not allowed" in s.reason]
