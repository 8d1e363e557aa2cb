"""Bad configs end before any work, with a message that names the field (or the path) and its value.

Each case goes through the real CLI (`a2b validate` and `a2b train`, in-process through `cli.main`,
plus one real `a2b` process for the exit codes): exit 2, the field on stderr, and nothing created —
no run directory, no checkpoint, not even the synthetic corpus that training would generate.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from _util import A2B, REPO, tiny_config

from a2b_pipeline.cli import main
from a2b_pipeline.configs import ConfigError, check_paths
from a2b_pipeline.state import TrainState
from a2b_pipeline.train import train


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(tiny_config(tmp_path).to_yaml())
    return path


def _nothing_created(tmp_path: Path) -> None:
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("run.yaml", "afile"))
    assert made == [], f"a refused config still created {made}"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


# (override, what stderr must name): the dotted field and the offending value
BAD = [
    ("train.max_stepz=3", "train.max_stepz: unknown key"),
    ("optimizer.betas=[0.9, 0.99, 0.1]", "optimizer.betas"),
    ("train.max_steps=many", "train.max_steps: Input should be a valid integer"),
    ("data.batch_size=fast", "data.batch_size"),
    ("optimizer.lr=-0.001", "optimizer.lr: Input should be greater than 0 (got -0.001)"),
    ("optimizer.lr=0", "optimizer.lr: Input should be greater than 0 (got 0)"),
    ("optimizer.lr=.inf", "optimizer.lr: Input should be a finite number"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("data.batch_size=0", "data.batch_size: Input should be greater than 0 (got 0)"),
    ("data.datasets.1.weight=-1", "data.datasets.1.weight: Input should be greater than or equal to 0"),
    ("data.datasets.0.weight=.nan", "data.datasets.0.weight"),
    ("data.datasets.0.weight=.inf", "data.datasets.0.weight: Value error, weight must be a finite number"),
    ("data.weight_schedule=[{step: 4, weights: [1, -0.5]}]", "data.weight_schedule.0.weights.1"),
    ("data.weight_schedule=[{step: 4, weights: [.nan, 1]}]", "data.weight_schedule.0.weights.0"),
    ("data.weight_schedule=[{step: 4, weights: [.inf, 1]}]", "weight_schedule.0.weights must be finite"),
    (
        "data.weight_schedule=[{step: 4, weights: [0, 0]}]",
        "weight_schedule.0.weights must be finite and not all",
    ),
    (
        "data.weight_schedule=[{step: 4, weights: [1]}]",
        "weight_schedule.0.weights has 1 weights for 2 datasets",
    ),
    ("data.weight_schedule=[{step: 4, weights: [1, 1, 1]}]", "has 3 weights for 2 datasets"),
    ("data.weight_schedule=[{step: 4, weights: [1, 1]}, {step: 2, weights: [1, 1]}]", "steps must increase"),
    # values that validated but could not run (#16 item 8): an unseedable seed, impossible Adam betas,
    # features too large to allocate, a target grid with no sample in a window, a hop that never ends
    ("seed=1.0e+20", "(got 1e+20)"),
    ("data.datasets.0.synthetic.seed=-1", "data.datasets.0.synthetic.seed: Input should be greater than or"),
    ("optimizer.betas=[2, 0.9]", "optimizer.betas.0: Input should be less than 1 (got 2)"),
    ("optimizer.betas=[0.9, -1]", "optimizer.betas.1: Input should be greater than or equal to 0"),
    ("data.n_mels=1000000000", "data.n_mels: Input should be less than or equal to 1024"),
    ("data.batch_size=10000000", "data.batch_size: Input should be less than or equal to 65536"),
    ("data.datasets.0.synthetic.subjects=1000000000", "data.datasets.0.synthetic.subjects"),
    ("data.target_rate=1e-12", "data: Value error, target_rate=1e-12 Hz gives no target sample in a window"),
    ("data.hop_seconds=1e-9", "data: Value error, hop_seconds=1e-09 is finer than the finest grid step"),
    ("data.frame_rate=20000", "data.frame_rate: Input should be less than or equal to 1000"),
    ("model.layers=100000000", "model.conv_gru.layers: Input should be less than or equal to 1024"),
]


@pytest.mark.parametrize(("override", "named"), BAD, ids=[b[0] for b in BAD])
def test_bad_field_is_named_by_validate_and_train_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, named: str
) -> None:
    cfg = str(_config_file(tmp_path))
    for command in ("validate", "train"):
        code, err = _cli(capsys, command, cfg, "--set", override)
        assert code == 2, (command, err)
        assert named in err, (command, err)
        assert err.startswith(f"error: {cfg}: 1 invalid field(s)"), err
    _nothing_created(tmp_path)


def test_all_dataset_weights_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config_file(tmp_path))
    sets = ["--set", "data.datasets.0.weight=0", "--set", "data.datasets.1.weight=0"]
    for command in ("validate", "train"):
        code, err = _cli(capsys, command, cfg, *sets)
        assert code == 2 and "datasets.*.weight: all weights are zero" in err, err
    _nothing_created(tmp_path)
    # one zero weight is fine: that dataset is simply not drawn
    code, _ = _cli(capsys, "validate", cfg, "--set", "data.datasets.0.weight=0")
    assert code == 0


def test_missing_manifest_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config_file(tmp_path))
    missing = tmp_path / "nowhere" / "manifest.csv"
    sets = ["--set", "data.datasets.1.type=manifest", "--set", f"data.datasets.1.manifest={missing}"]
    for command in ("validate", "train"):
        code, err = _cli(capsys, command, cfg, *sets)
        assert code == 2, err
        assert f"data.datasets.1.manifest: manifest not found: {missing}" in err, err
    _nothing_created(tmp_path)


def _unwritable(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """(checkpoint.dir, the existing path that blocks it)."""
    if how == "under_a_file":  # blocks root too
        blocker = tmp_path / "afile"
        blocker.write_text("not a directory")
        return blocker / "runs", blocker
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories; the under_a_file case covers root")
    blocker = tmp_path / "readonly"
    blocker.mkdir()
    blocker.chmod(0o555)
    return blocker / "runs", blocker


@pytest.mark.parametrize("how", ["under_a_file", "read_only_dir"])
def test_unwritable_checkpoint_dir_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    cfg = str(_config_file(tmp_path))
    ckpt_dir, blocker = _unwritable(tmp_path, how)
    try:
        for command in ("validate", "train"):
            code, err = _cli(capsys, command, cfg, "--set", f"checkpoint.dir={ckpt_dir}")
            assert code == 2, err
            assert "checkpoint.dir: can't create" in err and str(blocker) in err, err
        # --run-dir is checked the same way
        code, err = _cli(capsys, "train", cfg, "--run-dir", str(ckpt_dir / "r"))
        assert code == 2 and "--run-dir: can't create" in err and str(blocker) in err, err

        # the library refuses it too, before it prepares any data
        run_cfg = tiny_config(tmp_path, [f"checkpoint.dir={ckpt_dir}"])
        with pytest.raises(ConfigError, match="checkpoint.dir"):
            check_paths(run_cfg)
        with pytest.raises(
            PermissionError, match="checkpoint.dir: can.t write the run directory " + re.escape(str(ckpt_dir))
        ):
            train(TrainState.from_config(run_cfg))
        assert not (tmp_path / "synA").exists() and not (tmp_path / "cache").exists()
    finally:
        if blocker.is_dir():
            blocker.chmod(0o755)
    made = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("run.yaml", blocker.name))
    assert made == []


def test_bad_yaml_and_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    code, err = _cli(capsys, "validate", str(bad))
    assert code == 2 and f"{bad}: not valid YAML" in err
    bad.write_text("- just\n- a list\n")
    code, err = _cli(capsys, "train", str(bad))
    assert code == 2 and "top level must be a mapping" in err
    code, err = _cli(capsys, "train", str(tmp_path / "absent.yaml"))
    assert code == 2 and "config file not found" in err
    code, err = _cli(capsys, "validate", str(_config_file(tmp_path)), "--set", "train.max_steps")
    assert code == 2 and "must look like dotted.key=value" in err


def test_real_process_exit_codes_and_stderr(tmp_path: Path) -> None:
    """The installed entry point: config errors exit 2 with the field on stderr, nothing on stdout."""
    raw = yaml.safe_load(_config_file(tmp_path).read_text())
    raw["optimizer"]["lr"] = 0
    raw["train"]["max_stepz"] = 3
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([*A2B, "train", str(cfg)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "2 invalid field(s)" in proc.stderr and "optimizer.lr" in proc.stderr
    assert "train.max_stepz: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    _nothing_created(tmp_path)
