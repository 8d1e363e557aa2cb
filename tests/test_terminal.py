"""What the terminal shows: `a2b demo` (quiet by default, `-v` for the full logs), training progress lines
where there is no terminal, and `a2b resume` given the checkpoint.dir that holds the run(s)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from _util import ASSET_NAMES, dagster_env, tiny_config
from dagster import DagsterInstance

from a2b_pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_prints_one_line_per_asset_and_check_no_debug_no_migrations_no_line_twice(
    tmp_path: Path,
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "demo.yaml").write_text(tiny_config(tmp_path, ["name=demo"]).to_yaml())
    env = dagster_env(A2B_CONFIGS_DIR=str(configs), A2B_WANDB_MODE="disabled", A2B_DEVICE="cpu")
    home = tmp_path / "home"  # a new DAGSTER_HOME: its SQLite storage is created (and migrated) now
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "a2b_pipeline.cli",
            "demo",
            "--dagster-home",
            str(home),
            "--data-root",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # what a person sees: both streams, in order
        text=True,
        timeout=600,
    )
    out = r.stdout
    assert r.returncode == 0, out
    lines = [line.rstrip() for line in out.splitlines() if line.strip()]
    assert not [line for line in lines if "DEBUG" in line], out
    assert not [line for line in lines if "alembic" in line.lower() or "migrat" in line.lower()], out
    assert "Warning:" not in out, out  # Dagster's beta/preview notices are not for the demo's reader
    twice = sorted({line for line in lines if lines.count(line) > 1})
    assert not twice, twice
    for asset in ASSET_NAMES:  # one line per asset, in order of completion
        assert len([line for line in lines if line.split()[:2] == ["ok", asset]]) == 1, (asset, out)
    order = [next(i for i, line in enumerate(lines) if line.split()[:2] == ["ok", a]) for a in ASSET_NAMES]
    assert order == sorted(order)
    assert any(line.split()[:3] == ["ok", "check", "corpus_manifest:corpus_files_readable"] for line in lines)
    # the tiny model may not beat its baselines: the gate then warns (a line saying so), it does not fail
    (gate,) = [line for line in lines if line.split()[1:3] == ["check", "evaluation:evaluation_metrics_ok"]]
    assert gate.split()[0] in ("ok", "warn") and "better than" in gate, out
    closing = [line for line in lines if line.strip().startswith("whole-recording Pearson r")]
    assert closing and "better than audio_linear by" in closing[0], out
    assert any(line.strip().startswith("verdict: ") for line in lines), out
    with DagsterInstance.from_config(str(home)) as instance:  # a job of the definitions: the UI can re-run it
        assert [r.job_name for r in instance.get_runs()] == ["experiment_job"]
    assert f"DAGSTER_HOME={home}" in out and "dagster dev" in out
    assert len(lines) < 30, out


def test_progress_lines_without_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    monkeypatch.setenv("A2B_PROGRESS_SECONDS", "0")  # a line every step, so a 6-step run shows them all
    cfg = tiny_config(tmp_path)
    with caplog.at_level(logging.INFO, logger="a2b_pipeline.training.progress"):
        train(TrainState.from_config(cfg, run_dir=tmp_path / "run"))
    lines = [r.getMessage() for r in caplog.records if r.name == "a2b_pipeline.training.progress"]
    assert len(lines) == 6, lines
    assert lines[0].startswith("tiny: step 1/6 (17%)") and "steps/s" in lines[0] and "ETA 0:00:" in lines[0]
    assert "loss " in lines[-1] and lines[-1].startswith("tiny: step 6/6 (100%)")


def test_resume_given_the_checkpoint_dir_resumes_its_one_run_or_lists_several(tmp_path: Path, capsys) -> None:
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(tiny_config(tmp_path).to_yaml())
    root = tmp_path / "runs"  # checkpoint.dir
    assert main(["train", str(cfg_path), "--set", "train.max_steps=2"]) == 0
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    capsys.readouterr()
    # the checkpoint.dir holding one run: that run is resumed (to its configured end: 2 steps, done)
    assert main(["resume", str(root)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run) and f"resuming the run in {run}" in err
    # two runs: they are listed, each with its `a2b resume` command, and nothing is trained
    assert main(["train", str(cfg_path), "--set", "train.max_steps=2", "--set", "seed=1"]) == 0
    capsys.readouterr()
    assert main(["resume", str(root)]) == 2
    out, err = capsys.readouterr()
    listed = [line.split()[2] for line in err.splitlines() if line.strip().startswith("a2b resume")]
    assert sorted(listed) == sorted(str(p) for p in root.iterdir() if p.is_dir()) and len(listed) == 2
    assert "complete, step 2" in err
    assert main(["resume", str(tmp_path / "nothing")]) == 1


def test_demo_hint_is_the_readme_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the demo's default places, its closing hint is the `dagster dev` command README.md gives."""
    from a2b_pipeline.cli.demo import browse_command

    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    hint = browse_command(tmp_path / ".dagster_home", tmp_path, tmp_path / "configs")
    assert hint == "DAGSTER_HOME=$PWD/.dagster_home .venv/bin/dagster dev"
    assert f"`{hint}`" in (REPO / "README.md").read_text()
    # elsewhere, the places it used are spelled out
    other = browse_command(tmp_path / "home", tmp_path / "data", tmp_path / "cfg")
    assert f"DAGSTER_HOME={tmp_path / 'home'}" in other and f"A2B_CONFIGS_DIR={tmp_path / 'cfg'}" in other


@pytest.mark.parametrize("size", [(40, 100), (0, 0)])  # (0, 0): a pseudo-terminal nobody sized (docker -t)
def test_progress_bar_on_a_terminal_with_log_lines_above_it(tmp_path: Path, size: tuple[int, int]) -> None:
    """Under a real pseudo-terminal `a2b train` draws a tqdm bar (step count, rate, loss) and prints its
    log lines above it, each whole on its own line; no progress lines are logged beside the bar."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(tiny_config(tmp_path).to_yaml())
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "a2b_pipeline.cli", "train", str(cfg_path), "--run-dir", str(run)]
    proc = subprocess.Popen(
        [*cmd, "--set", "train.progress_bar=true"],
        cwd=REPO,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    pieces = [p.strip() for p in screen.replace("\r", "\n").split("\n") if p.strip()]
    bars = [p for p in pieces if "%|" in p]
    assert bars and any("6/6" in p and "100%" in p and "loss=" in p and "step/s" in p for p in bars), screen
    logged = [p for p in pieces if "a2b_pipeline.train" in p]
    assert any("training tiny on cpu" in p for p in logged), screen
    assert not [p for p in logged if "%|" in p], screen  # a log line is never drawn into the bar
    assert "tiny: step 1/6" not in screen  # the bar replaces the progress lines
