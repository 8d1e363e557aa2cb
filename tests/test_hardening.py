"""Hardening, second round (#24): a checkpoint is data and never authority, every read is bounded, nothing is
deleted outside its root, resampling memory is bounded, no secret is persisted, sizes are bounded, bad input
gets a clear error, nonsense is refused. Each test drives the real CLI or library on real files."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _util import REPO, finished_tiny_run, http_server, tiny_config

from a2b_pipeline.checkpoint.directory import CheckpointError
from a2b_pipeline.cli import main
from a2b_pipeline.state import TrainState


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_tiny_run(tmp_path_factory.mktemp("hardening"))


def _copy(tmp_path: Path, template: Path, name: str = "run") -> Path:
    shutil.copytree(template, tmp_path / name, symlinks=True)
    return tmp_path / name


def _edit_state(ckpt: Path, edit: Callable[[dict], None], rehash: bool = False) -> None:
    """Edit a checkpoint's train_state.json as an attacker would: `rehash` recomputes config_hash."""
    from a2b_pipeline.configs import RunConfig

    path = ckpt / "train_state.json"
    raw = json.loads(path.read_text())
    edit(raw)
    if rehash:
        raw["config_hash"] = RunConfig.model_validate(raw["config"]).config_hash()
    path.write_text(json.dumps(raw))


def _wav(path: Path, rate: int = 16000, seconds: float = 10.0) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


# ---- 1. a checkpoint grants itself nothing ----


def test_a_checkpoint_config_can_not_widen_what_the_invocation_allows(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy(tmp_path, finished_run)
    for step in sorted(p.name for p in run.glob("step_*")):

        def widen(raw: dict) -> None:
            data = raw["config"]["data"]
            data["url_schemes"] = ["http"]
            data["allow_outside_paths"] = True
            data["datasets"][0]["root"] = "http://169.254.169.254/latest"

        _edit_state(run / step, widen, rehash=True)
    newest = run / "step_000000006"
    assert TrainState.from_checkpoint(newest).config.data.url_schemes == ["http"]  # the hash checks out
    wav = _wav(tmp_path / "a.wav")
    (run / "norm_stats.json").unlink()  # so predict needs the corpus too
    for args in (
        ("evaluate", str(newest)),
        ("predict", str(newest), str(wav), "--out", str(tmp_path / "out")),
        ("resume", str(run)),
    ):
        code, err = _cli(capsys, *args)
        assert code == 2, (args, err)
        assert "data.url_schemes: 'http' is not granted by this environment" in err, err
        assert "data.allow_outside_paths: true is not granted" in err, err
        assert "data.datasets.0.root: http://169.254.169.254/latest" in err, err
    # a command with a config: the config is the grant, and it allows none of this
    cfg = tiny_config(tmp_path / "own", ["train.max_steps=8"])
    config = tmp_path / "own.yaml"
    config.write_text(cfg.to_yaml())
    code, err = _cli(capsys, "train", str(config), "--run-dir", str(run))
    # (runs.py refuses it first: its config is not this config; the grant check stands behind that)
    assert code == 2 and ("is not granted by the config" in err or "a run of another config" in err), err
    # what the environment grants, it grants: only the host the config names is left to refuse
    monkeypatch.setenv("A2B_ALLOW_OUTSIDE_PATHS", "1")
    monkeypatch.setenv("A2B_URL_SCHEMES", "s3")
    code, err = _cli(capsys, "evaluate", str(newest))
    assert code == 2 and "allow_outside_paths" not in err and "data.datasets.0.root" in err, err
    assert not (tmp_path / "out").exists()


# ---- 2. one bounded reader ----


@pytest.mark.timeout(120)
def test_run_directory_files_are_read_bounded(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from a2b_pipeline.experiments.leaderboard import row_from_run_dir

    run = _copy(tmp_path, finished_run)
    norm = run / "norm_stats.json"
    saved = json.loads(norm.read_text())
    wav = _wav(tmp_path / "a.wav")
    predict = ("predict", str(run), str(wav), "--out", str(tmp_path / "out"))

    norm.unlink()
    os.mkfifo(norm)  # opening it for reading would block until a writer comes
    code, err = _cli(capsys, *predict)
    assert code == 2 and f"{norm}: not a regular file" in err, err

    norm.unlink()
    norm.symlink_to("/dev/zero")  # endless
    code, err = _cli(capsys, *predict)
    assert code == 2 and f"{norm}: a symlink" in err, err

    norm.unlink()  # nested 100,000 deep
    norm.write_text('{"data_version": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, err = _cli(capsys, *predict)
    assert code == 2 and f"{norm}: nested more than 64 deep" in err, err

    norm.write_text(json.dumps(saved))
    report = run / "evaluation-test.json"
    with open(report, "wb") as f:  # 300 MB (sparse): refused before anything is read into memory
        f.truncate(300 << 20)
    row = row_from_run_dir(run)
    assert row.status == "failed" and "larger than 256 MiB" in row.note, row


# ---- 3. deletes never follow links ----


def test_cache_pruning_never_deletes_through_a_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    own = cache / "features" / "aa" / "bb" / "own.a2bc"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x" * 1000)
    victim = tmp_path / "precious" / "cc" / "thesis.a2bc"  # outside the cache, named like an entry
    victim.parent.mkdir(parents=True)
    victim.write_bytes(b"y" * 1000)
    (cache / "features" / "dd").symlink_to(tmp_path / "precious")  # a folder link inside the cache
    (cache / "features" / "aa" / "bb" / "link.a2bc").symlink_to(victim)
    for p in (own, victim):
        os.utime(p, (1, 1))
    code, _ = _cli(capsys, "cache", "--cache-dir", str(cache), "--max-gb", "0", "--keep-recent-min", "0")
    assert code == 0
    assert victim.read_bytes() == b"y" * 1000 and not own.exists()
    # (--fresh deletes nothing since #22: a new attempt directory; `a2b remove-runs` refuses symlinks)


# ---- 4. resampling with bounded memory ----


ODD_RATES = [22051, 44101, 88201, 96001, 191999, 192000]


def test_odd_sample_rates_resample_in_bounded_memory(tmp_path: Path) -> None:
    """1 s at each rate, read at 16 kHz under a 3 GiB address-space limit (the polyphase sinc built a
    kernel of ~6 GB for 44,101 Hz and ~25 GB for 191,999 Hz)."""
    for rate in ODD_RATES:
        t = np.arange(rate) / rate
        sf.write(tmp_path / f"{rate}.wav", (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate)
    script = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from a2b_pipeline.data.audio import read_audio\n"
        f"for rate in {ODD_RATES}:\n"
        f"    w = read_audio('{tmp_path}/' + str(rate) + '.wav', 16000).numpy()\n"
        "    spec = np.abs(np.fft.rfft(w[2000:14000] * np.hanning(12000)))\n"
        "    print(rate, len(w), int(np.argmax(spec) * 16000 / 12000))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line, rate in zip(proc.stdout.splitlines(), ODD_RATES, strict=True):
        got_rate, n, peak = map(int, line.split())
        assert got_rate == rate and n == 16000 and abs(peak - 1000) <= 2, line


# ---- 5. secrets ----


SECRET_FORMS = [
    "https://alice:s3cr3t@example.com/m.csv",
    "https://alice:s3/cr#et@example.com/m.csv",  # malformed userinfo: '/' and '#' in the password
    "https://alice:s3 cr3t@example.com/m.csv",
    "https://alice@s3cr3t@example.com/m.csv",
    "https://s3cr3t@example.com/m.csv",
    "https://example.com/m.csv?token=s3cr3t",
    "https://example.com/m.csv?a=1;token=s3cr3t",
    "https://example.com/m.csv#access_token=s3cr3t",
    "https://example.com/m.csv?access_token=s3cr3t&x=1",
    "https://example.com/m.csv?client_secret=s3cr3t",
    "https://example.com/m.csv?api-key=s3cr3t",
    "https://example.com/m.csv?api_key=s3cr3t",
    "https://example.com/m.csv?apikey=s3cr3t",
    "https://example.com/m.csv?key=s3cr3t",
    "https://example.com/m.csv?pass=s3cr3t",
    "https://example.com/m.csv?password=s3cr3t",
    "https://example.com/m.csv?pwd=s3cr3t",
    "https://example.com/m.csv?secret=s3cr3t",
    "https://example.com/m.csv?auth=s3cr3t",
    "https://example.com/m.csv?sig=s3cr3t&sv=2020",
    "https://b.s3.amazonaws.com/k?AWSAccessKeyId=s3cr3t&Expires=1&Signature=s3cr3t",
    "https://b.s3.amazonaws.com/k?Policy=s3cr3t&Key-Pair-Id=s3cr3t&Signature=s3cr3t",
    "https://b.s3.amazonaws.com/k?X-Amz-Credential=s3cr3t&X-Amz-Signature=s3cr3t",
    "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=s3cr3t",
    "https://storage.googleapis.com/b/k?X-Goog-Signature=s3cr3t",
    "https://example.com/m.csv?id_token=s3cr3t",
    "https://example.com/m.csv?session=s3cr3t",
]


@pytest.mark.parametrize("url", SECRET_FORMS)
def test_one_redaction_covers_the_usual_credential_forms(url: str) -> None:
    from a2b_pipeline.security import redact_text  # what every message, log line and record goes through
    from a2b_pipeline.security import redact_text as the_one

    shown = redact_text(f"failed to read {url} (status 403)")
    assert "s3cr3t" not in shown, shown
    assert shown.startswith("failed to read http") and shown.endswith(" (status 403)"), shown
    assert redact_text is the_one


def test_credentials_never_go_into_a_config_and_references_are_filled_in_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from a2b_pipeline.configs import ConfigError, config_from_dict
    from a2b_pipeline.data import remote

    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "m", "type": "manifest", "manifest": "https://h/m.csv?token=s3cr3t"}]
    with pytest.raises(ConfigError, match=r"data.datasets.0.manifest: .*carries a credential") as e:
        config_from_dict(raw)
    assert "s3cr3t" not in str(e.value)
    # a reference is what the config holds (and so every checkpoint and record): the value comes from the
    # environment when the file is opened
    raw["data"]["datasets"][0]["manifest"] = "https://h/m.csv?token=${A2B_TEST_TOKEN}"
    assert "${A2B_TEST_TOKEN}" in config_from_dict(raw).to_yaml()

    seen: list[str] = []

    def guarded(path: str) -> tuple[int, bytes]:
        seen.append(path)
        return (200, b"ok") if path.endswith("token=s3cr3t") else (401, b"")

    with http_server(guarded) as port:
        url = f"http://127.0.0.1:{port}/m.csv?token=${{A2B_TEST_TOKEN}}"
        with pytest.raises(remote.RemoteAccessError, match="A2B_TEST_TOKEN.*not set"):
            remote.fetch(url, tmp_path / "c1")
        monkeypatch.setenv("A2B_TEST_TOKEN", "s3cr3t")
        local = remote.fetch(url, tmp_path / "c2")
    assert Path(local).read_bytes() == b"ok" and any(p.endswith("token=s3cr3t") for p in seen)
    assert "s3cr3t" not in local  # the cache is keyed by the reference

    # -v is the pipeline's DEBUG, never the HTTP/S3 clients' wire logs (botocore prints key IDs and tokens)
    config = tmp_path / "v.yaml"
    config.write_text(tiny_config(tmp_path).to_yaml())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = []  # as in a fresh `a2b` process, where -v configures the root logger
    try:
        assert main(["-v", "validate", str(config)]) == 0
        assert logging.getLogger("a2b_pipeline").getEffectiveLevel() == logging.DEBUG
        for name in ("botocore", "urllib3", "s3fs", "aiobotocore", "fsspec"):
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        root.handlers[:], root.level = saved[0], saved[1]


# ---- 6. sizes are bounded ----


@pytest.mark.timeout(60)
def test_a_sweep_grid_is_counted_before_it_is_expanded(tmp_path: Path) -> None:
    from a2b_pipeline.configs import ConfigError
    from a2b_pipeline.experiments.sweeps import load_sweep

    base = tmp_path / "base.yaml"
    base.write_text(tiny_config(tmp_path).to_yaml())
    keys = [
        "optimizer.lr",
        "seed",
        "data.batch_size",
        "model.hidden",
        "train.max_steps",
        "optimizer.weight_decay",
    ]
    grid = {k: list(range(1, 101)) for k in keys}
    sweep = tmp_path / "big.yaml"
    sweep.write_text(json.dumps({"base": "base.yaml", "grid": grid}))
    with pytest.raises(ConfigError, match=r"1,000,000,000,000 experiments, over the limit of 10,000"):
        load_sweep(sweep)


def test_a_signal_time_past_the_recording_is_named_and_a_huge_manifest_cell_skips_its_row(
    tmp_path: Path,
) -> None:
    from a2b_pipeline.configs import config_from_dict
    from a2b_pipeline.data.manifest import read_manifest_listing
    from a2b_pipeline.data.pipeline import prepare_data
    from a2b_pipeline.data.synthetic import write_synthetic_corpus

    manifest = write_synthetic_corpus(
        tmp_path / "c", subjects=4, recordings_per_subject=2, seconds=16, seed=1
    )
    rows = manifest.read_text().splitlines()
    signal = manifest.parent / rows[1].split(",")[rows[0].split(",").index("signal_path")]
    lines = signal.read_text().splitlines()
    lines.append("1e13," + lines[-1].split(",", 1)[1])  # numpy would be asked for 291 TiB
    signal.write_text("\n".join(lines) + "\n")
    raw = tiny_config(tmp_path).model_dump(mode="json")
    raw["data"]["datasets"] = [{"name": "wild", "type": "manifest", "manifest": str(manifest)}]
    raw["data"]["on_bad_recording"] = "skip"
    data = prepare_data(config_from_dict(raw))
    reasons = [s.reason for s in data.skipped]
    named = f"time 1e+13 s at data row {len(lines) - 1} is far past the recording's end"
    assert any(named in r for r in reasons), reasons
    assert sum(len(v) for v in data.recordings["train"].values()) > 0

    rows[3] = rows[3] + "," + "x" * 200_000  # one cell past the csv module's limit
    manifest.write_text("\n".join(rows) + "\n")
    listing = read_manifest_listing(str(manifest), "wild", on_bad="skip")
    assert len(listing.recordings) == len(rows) - 2
    (skipped,) = listing.skipped
    assert (
        skipped.row == 3 and "line 4: not a readable CSV row (field larger than field limit" in skipped.reason
    )


# ---- 7. clear errors ----


def test_bad_checkpoint_values_and_unusable_paths_are_named(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(tmp_path, finished_run)
    ckpt = run / "step_000000006"
    text = (ckpt / "train_state.json").read_text()
    for field, edit in (
        ("num_threads", lambda raw: raw.update(num_threads=-4)),
        ("torch_rng_state", lambda raw: raw["rng_state"]["torch_rng_state"].update(cpu=[1, 2, 3])),
    ):
        _edit_state(ckpt, edit)
        with pytest.raises(CheckpointError, match=field):
            TrainState.from_checkpoint(ckpt)
        code, err = _cli(capsys, "evaluate", str(ckpt))
        assert code == 1 and field in err, err
        (ckpt / "train_state.json").write_text(text)

    # predict --out naming an existing file
    wav = _wav(tmp_path / "a.wav")
    (tmp_path / "taken").write_text("mine")
    code, err = _cli(capsys, "predict", str(run), str(wav), "--out", str(tmp_path / "taken"))
    assert code == 2 and "--out" in err and "is not a directory" in err, err
    assert (tmp_path / "taken").read_text() == "mine"

    # a config path that is a FIFO: refused, not blocking in open()
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    code, err = _cli(capsys, "validate", str(fifo))
    assert code == 2 and f"{fifo}: not a regular file" in err, err


def test_evaluate_prints_the_report_it_could_not_write(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(tmp_path, finished_run)
    blocked = run / "evaluation-test.json"
    blocked.mkdir()  # a write that fails even for root (a read-only run directory, for anyone else)
    (blocked / "keep").write_text("")
    code = main(["evaluate", str(run), "--json"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert json.loads(out)["split"] == "test"  # the whole report, on stdout
    assert f"the report could not be written to {blocked}" in err, err


def test_resume_in_a_read_only_run_directory_is_named(tmp_path: Path, finished_run: Path) -> None:
    """A read-only run directory gives exit 1 naming it, no traceback. Root writes into any directory, so as
    root the run directory is bind-mounted read-only in a private mount namespace of the command."""
    run = _copy(tmp_path, finished_run)
    command = [sys.executable, "-m", "a2b_pipeline.cli", "resume", str(run)]
    if os.geteuid() == 0:
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("root, and no private mount namespace to make a read-only directory")
        script = f'mount --bind "{run}" "{run}" && mount -o remount,bind,ro "{run}" && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", script, "sh", *command]
    else:
        run.chmod(0o555)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    finally:
        run.chmod(0o755)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{run}: run directory not writable" in proc.stderr and "Traceback" not in proc.stderr


# ---- 8. nonsense is refused ----


def test_absurd_steps_nan_weights_and_nan_statistics_are_refused(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    from a2b_pipeline.checkpoint.directory import file_digest

    run = _copy(tmp_path, finished_run)
    ckpt = run / "step_000000006"
    text = (ckpt / "train_state.json").read_text()
    _edit_state(ckpt, lambda raw: raw.update(global_step=10**30))  # past any counter: refused on load
    with pytest.raises(CheckpointError, match="global_step"):
        TrainState.from_checkpoint(ckpt)
    _edit_state(ckpt, lambda raw: raw.update(global_step=7))  # past the run's end (6): never "completes"
    code, err = _cli(capsys, "resume", str(ckpt))
    assert code == 1 and "global_step 7 is past the run's end (6 steps)" in err, err
    assert not (run / "step_000000007").exists()
    (ckpt / "train_state.json").write_text(text)

    wav = _wav(tmp_path / "a.wav")
    tensors = load_file(ckpt / "model.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name][...] = math.nan
    save_file(tensors, str(ckpt / "model.safetensors"))
    _edit_state(
        ckpt,
        lambda raw: raw["checkpoint_state"]["files"].update(
            {"model.safetensors": file_digest(ckpt / "model.safetensors")}
        ),
    )
    code, err = _cli(capsys, "predict", str(ckpt), str(wav), "--out", str(tmp_path / "out"))
    assert code == 1 and f"non-finite weights (NaN/inf) in {name}" in err, err
    assert not list((tmp_path / "out").glob("*.csv"))

    run2 = _copy(tmp_path, finished_run, "run2")
    norm = run2 / "norm_stats.json"
    saved = json.loads(norm.read_text())
    saved["norm"]["feature_mean"][0] = math.nan
    norm.write_text(json.dumps(saved))
    code, err = _cli(capsys, "predict", str(run2), str(wav), "--out", str(tmp_path / "out2"))
    assert code == 2 and f"{norm}: holds NaN or infinite statistics" in err, err


def test_http_401_and_a_refused_port_are_reported_as_what_they_are(tmp_path: Path) -> None:
    from a2b_pipeline.data import remote

    with (
        http_server(lambda path: (401, b"")) as port,
        pytest.raises(remote.RemoteAccessError, match="access refused \\(HTTP 401"),
    ):
        remote.fetch(f"http://127.0.0.1:{port}/m.csv", tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(remote.RemoteError, match="cannot reach") as e:
        remote.fetch(f"http://127.0.0.1:{closed}/m.csv", tmp_path)
    assert not isinstance(e.value, FileNotFoundError)
