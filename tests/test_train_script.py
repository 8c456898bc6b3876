"""The command line: a quick successful run, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from module_files import load_module

from denoised_drs.cli import run_script
from denoised_drs.models import load_classifier

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_base.py"


def _load_script():
    return load_module(SCRIPT, "train_base")


QUICK = [
    "--dataset",
    "sample",
    "--epochs",
    "1",
    "--max-train",
    "32",
    "--max-test",
    "16",
    "--batch",
    "16",
    "--no-progress",
    "--cpu",
]


def test_cli_trains_and_writes_checkpoint_and_log(tmp_path):
    out = tmp_path / "rs.pt"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *QUICK, "--sigma", "0.5", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert (tmp_path / "rs.csv").read_text().startswith("epoch,lr,train_loss")
    assert load_classifier(out)(__import__("torch").rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sigma", "-1"], "sigma must be positive"),
        (["--target", "rs", "--branch", "l"], "branch must be 'full'"),
        (["--init", "missing.pt"], "checkpoint not found"),
        (["--arch", "resnet9000"], "unknown architecture"),
        (["--resume"], "no training state"),
        (["--strategy", "consistency", "--num-noise", "1"], "num-noise >= 2"),
        (["--weight-decay", "inf"], "weight-decay and momentum"),
        (["--sigma", "1e300"], "float32"),
        (["--log", "/"], "cannot write /"),
        (["--out", "model{branch}{x}.pt"], "only {branch}"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, flags, message):
    main = _load_script().main
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as exit_:
        run_script(lambda: main([*QUICK, "--out", str(out), *flags]), str(SCRIPT))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_folder_via_subprocess(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "m.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "m.pt").exists()
