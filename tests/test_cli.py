"""The scripts' error contract: bad input -> one line and exit 2; a bug -> one line and exit 1."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from module_files import load_module

from denoised_drs.checkpoint_file import load_weights_only
from denoised_drs.cli import run_script

REPO = Path(__file__).resolve().parents[1]


def exit_of(main, capsys):
    with pytest.raises(SystemExit) as stop:
        run_script(main, "tool.py")
    return stop.value.code, capsys.readouterr().err


def test_bad_input_and_bugs_end_in_one_line(capsys, monkeypatch):
    def bad_input():
        raise ValueError("sigma must be positive\nsecond line")

    def bug():
        return {}["missing"]

    assert exit_of(bad_input, capsys) == (2, "tool.py: error: sigma must be positive\n")
    code, err = exit_of(bug, capsys)
    assert code == 1 and err.count("\n") == 1 and "unexpected KeyError" in err
    assert exit_of(lambda: 0, capsys) == (0, "")
    monkeypatch.setenv("DENOISED_DRS_TRACEBACK", "1")
    with pytest.raises(KeyError):
        run_script(bug, "tool.py")


def test_unreadable_checkpoints_are_a_value_error_naming_the_file(tmp_path):
    text = tmp_path / "text.pt"
    text.write_text("hello")
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    for path in (text, truncated):
        with pytest.raises(ValueError, match=str(path)):
            load_weights_only(path)
    with pytest.raises(FileNotFoundError):
        load_weights_only(tmp_path)


def load_train_denoiser():
    return load_module(REPO / "scripts" / "train_denoiser.py", "train_denoiser")


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs"),
    (["--max-train", "0"], "--max-train"),
    (["--lr", "inf"], "--lr"),
    (["--ema", "1"], "--ema"),
    (["--num-head-channels", "0"], "--num-head-channels"),
    (["--max-train", "8", "--batch", "16"], "exceeds"),
])
def test_train_denoiser_refuses_impossible_settings_before_writing(tmp_path, flags, message):
    out = tmp_path / "d.pt"
    with pytest.raises(ValueError, match=message):
        load_train_denoiser().main(["--dataset", "sample", "--out", str(out), "--epochs", "1",
                                    *flags])
    assert list(tmp_path.iterdir()) == []


def test_a_script_bug_exits_1_without_a_traceback(tmp_path):
    # A real process whose main meets an exception nobody anticipated: still one line.
    # (analyze.py's int64 overflow of an idx served here until it became bad input.)
    bug = ("from denoised_drs.cli import run_script\n"
           "run_script(lambda: float(10 ** 400), 'tool.py')\n")
    result = subprocess.run([sys.executable, "-c", bug],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    # The overflow is not a ValueError, so run_script reports it as a bug: exit 1.
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tool.py: error: unexpected OverflowError: ")


def test_a_bad_input_under_the_launcher_ends_in_one_line(tmp_path):
    # `accelerate launch` itself would add a CalledProcessError traceback and exit 1.
    result = subprocess.run(
        [sys.executable, "-m", "denoised_drs.launch", "--num_processes", "1", "--cpu",
         str(REPO / "scripts" / "train_base.py"), "--dataset", "sample", "--sigma", "-1",
         "--out", str(tmp_path / "m.pt")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "train_base.py: error: sigma must be positive, finite and a float32"]
    assert list(tmp_path.iterdir()) == []


def test_only_the_main_process_of_a_launch_prints(capsys, monkeypatch):
    def bad_input():
        raise ValueError("sigma must be positive")

    monkeypatch.setenv("RANK", "1")
    assert exit_of(bad_input, capsys) == (2, "")
    monkeypatch.setenv("RANK", "0")
    assert exit_of(bad_input, capsys) == (2, "tool.py: error: sigma must be positive\n")


def test_an_allocator_out_of_memory_is_one_line_and_exit_2(capsys):
    def huge():
        torch.empty(1 << 62, dtype=torch.uint8)

    code, err = exit_of(huge, capsys)
    assert code == 2 and err.count("\n") == 1 and "smaller --batch" in err


def test_outputs_must_be_regular_files_and_distinct(tmp_path):
    from denoised_drs.errors import check_distinct_outputs, check_output_file

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        check_output_file(tmp_path / "fifo")
    check_output_file(tmp_path / "new.pt")
    (tmp_path / "m.pt").write_text("x")
    os.link(tmp_path / "m.pt", tmp_path / "hard.pt")
    for other in (tmp_path / "hard.pt", tmp_path / "." / "m.pt"):
        with pytest.raises(ValueError, match="--out and --log name the same file"):
            check_distinct_outputs({"--out": tmp_path / "m.pt", "--log": other})
    with pytest.raises(ValueError, match="same file"):  # two new paths, two spellings
        check_distinct_outputs({"--out": tmp_path / "a.pt",
                                "--log": tmp_path / "sub" / ".." / "a.pt"})
    check_distinct_outputs({"--out": tmp_path / "m.pt", "--log": tmp_path / "m.csv"})


def test_no_library_module_imports_the_cli():
    # The scripts depend on the library, never the reverse: a library module that
    # imported cli.py would pull the command-line layer into every user's import.
    package = REPO / "denoised_drs"
    for path in package.rglob("*.py"):
        if path.name == "cli.py" and path.parent == package:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(name.split(".")[-1] == "cli" for name in names), path
