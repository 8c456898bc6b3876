"""Hostile input to scripts/certify_diffusion.py and the CLI contract (issue 23: 2, 9, 10, 12).

A configuration re-run from another folder certifies the recorded models or refuses;
the embedded default refuses a foreign result before writing anything; an output
path that names a folder is refused; a stale ``WORLD_SIZE`` ends in one line instead
of a hang; a config's data keys of the wrong type and running out of memory end in
one line and exit 2.
"""

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_classifier
from module_files import load_module

from denoised_drs.cli import run_script
from denoised_drs.content import path_sha256
from denoised_drs.errors import check_output_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "certify_diffusion.py")


@pytest.fixture(scope="module")
def certify_main():
    return load_module(SCRIPT, "certify_diffusion_hostile").main


def run_in_process(main, args) -> tuple[int, list[str]]:
    """``main(args)`` through run_script, as the command line runs it: (status, stderr lines)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_script(lambda: main(args), SCRIPT)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue().strip().splitlines()


def rs_args(classifier, out, *extra):
    return ["--dataset", "sample", "--mode", "rs", "--classifier", str(classifier), "--N0", "10",
            "--N", "20", "--max", "3", "--device", "cpu", "--outfile", str(out), *extra]


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    at = lines[0].split("\t").index("time")
    return [[c for i, c in enumerate(line.split("\t")) if i != at] for line in lines]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 2: a configuration re-run does not depend on the working directory ----------


@pytest.fixture
def run_in_a(certify_main, tiny_checkpoints, tmp_path, monkeypatch):
    """A run in folder A with the relative checkpoint ``model.pt``; folder B holds another
    ``model.pt`` and is the working directory afterwards."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    shutil.copy(tiny_checkpoints["full"], a / "model.pt")
    write_classifier(b / "model.pt", "full", seed=7)
    monkeypatch.chdir(a)
    assert certify_main(rs_args("model.pt", "out.tsv")) == 0
    monkeypatch.chdir(b)
    return a, b


def test_config_rerun_from_another_folder_certifies_the_recorded_model(certify_main, run_in_a):
    a, b = run_in_a
    assert certify_main(["--config", str(a / "out.tsv.config.json"), "--outfile", "new.tsv"]) == 0
    saved = json.loads((b / "new.tsv.config.json").read_text())
    assert saved["content"]["classifier"][0]["sha256"] == path_sha256(a / "model.pt")
    assert rows_without_time(b / "new.tsv") == rows_without_time(a / "out.tsv")


def test_config_rerun_finds_a_moved_run_beside_its_configuration(certify_main, run_in_a):
    """The recorded absolute path is gone; the relative path is read against the config's
    folder, never against the working directory."""
    a, b = run_in_a
    moved = a.parent / "moved"
    a.rename(moved)
    assert certify_main(["--config", str(moved / "out.tsv.config.json"),
                         "--outfile", "new.tsv"]) == 0
    saved = json.loads((b / "new.tsv.config.json").read_text())
    assert saved["content"]["classifier"][0]["sha256"] == path_sha256(moved / "model.pt")


@pytest.mark.parametrize("damage", ["replaced", "deleted"])
def test_config_rerun_refuses_a_checkpoint_that_is_not_the_recorded_one(
    certify_main, run_in_a, damage
):
    a, b = run_in_a
    if damage == "replaced":
        write_classifier(a / "model.pt", "full", seed=8)
    else:
        (a / "model.pt").unlink()
    before = files_under(b)
    status, lines = run_in_process(
        certify_main, ["--config", str(a / "out.tsv.config.json"), "--outfile", "new.tsv"])
    assert status == 2 and len(lines) == 1
    assert "the classifier file model.pt recorded in" in lines[0]
    assert "is missing or changed" in lines[0]
    assert files_under(b) == before


def test_a_flag_overrides_the_config_and_is_read_from_the_working_directory(
    certify_main, run_in_a
):
    a, b = run_in_a
    (a / "model.pt").unlink()  # the recorded file is not needed when a flag replaces it
    assert certify_main(["--config", str(a / "out.tsv.config.json"), "--classifier", "model.pt",
                         "--outfile", "new.tsv"]) == 0
    saved = json.loads((b / "new.tsv.config.json").read_text())
    assert saved["content"]["classifier"][0]["sha256"] == path_sha256(b / "model.pt")


def test_config_rerun_loads_a_flags_file_denoiser_from_its_recorded_files(
    certify_main, tiny_checkpoints, tmp_path, monkeypatch
):
    """A denoiser given as an OpenAI flags file and checkpoint (both relative): the
    flags file is recorded as the denoiser, and both are found again from elsewhere."""
    from conftest import TINY_DENOISER_FLAGS
    from test_denoiser_sources import SCHEDULE, official_state_dict

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    (a / "flags.json").write_text(json.dumps({**TINY_DENOISER_FLAGS, **SCHEDULE}))
    torch.save(official_state_dict(TINY_DENOISER_FLAGS), a / "unet.pt")
    # Files of the same names in the working directory of the re-run, not to be read.
    (b / "flags.json").write_text("{}")
    torch.save(official_state_dict(TINY_DENOISER_FLAGS, seed=1), b / "unet.pt")
    monkeypatch.chdir(a)
    assert certify_main(rs_args(tiny_checkpoints["full"], "out.tsv", "--max", "1", "--N0", "4",
                                "--N", "8", "--denoiser-config", "flags.json",
                                "--denoiser-checkpoint", "unet.pt")) == 0
    monkeypatch.chdir(b)
    assert certify_main(["--config", str(a / "out.tsv.config.json"), "--outfile", "new.tsv"]) == 0
    saved = json.loads((b / "new.tsv.config.json").read_text())
    assert saved["content"]["denoiser"][0]["sha256"] == path_sha256(a / "flags.json")
    assert saved["content"]["denoiser_checkpoint"][0]["sha256"] == path_sha256(a / "unet.pt")
    assert rows_without_time(b / "new.tsv") == rows_without_time(a / "out.tsv")


def test_a_hand_written_config_reads_relative_paths_against_its_folder(
    certify_main, tiny_checkpoints, tmp_path, monkeypatch
):
    from denoised_drs.data import SAMPLE_PATH

    folder, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    shutil.copy(tiny_checkpoints["full"], folder / "model.pt")
    shutil.copy(SAMPLE_PATH, folder / "data.npz")
    # Same names in the working directory, which must not be read.
    write_classifier(elsewhere / "model.pt", "full", seed=7)
    (elsewhere / "data.npz").write_text("not data\n")
    (folder / "run.json").write_text(json.dumps({
        "mode": "rs", "classifier": "model.pt", "dataset": "sample", "data_dir": "data.npz",
        "max": 2, "n0": 10, "n": 20, "device": "cpu"}))
    monkeypatch.chdir(elsewhere)
    assert certify_main(["--config", str(folder / "run.json"), "--outfile", "r.tsv"]) == 0
    saved = json.loads((elsewhere / "r.tsv.config.json").read_text())
    assert saved["content"]["classifier"][0]["sha256"] == path_sha256(folder / "model.pt")
    assert saved["data_dir"] == str(folder / "data.npz")


def test_config_rerun_refuses_data_that_is_not_the_recorded_data(
    certify_main, tiny_checkpoints, tmp_path, monkeypatch
):
    from denoised_drs.data import SAMPLE_PATH

    with np.load(SAMPLE_PATH) as arrays:
        images, labels, indices = arrays["images"], arrays["labels"], arrays["indices"]
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels, indices=indices)
    assert certify_main(rs_args(tiny_checkpoints["full"], tmp_path / "out.tsv",
                                "--data-dir", str(data))) == 0
    changed = images.copy()
    changed[1, 3, 3] ^= 1
    np.savez(data, images=changed, labels=labels, indices=indices)  # same path, other data
    rerun = ["--config", str(tmp_path / "out.tsv.config.json"), "--outfile",
             str(tmp_path / "new.tsv")]
    before = files_under(tmp_path)
    status, lines = run_in_process(certify_main, rerun)
    assert status == 2 and len(lines) == 1
    assert "the data loaded is not the data it records: the images or labels" in lines[0]
    assert files_under(tmp_path) == before
    # Data chosen by a flag is the user's choice: no record to hold it to.
    assert certify_main([*rerun, "--data-dir", str(data)]) == 0


# -- item 9: nothing written before a refusal; an output that names a folder ----------


def test_the_embedded_default_refuses_a_foreign_result_before_writing(certify_main, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    # The fourth of the five runs' outputs holds another run's rows, without configuration.
    (outdir / "drs_joint.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n")
    before = files_under(outdir)
    status, lines = run_in_process(
        certify_main, ["--N0", "5", "--N", "10", "--max", "1", "--device", "cpu",
                       "--outdir", str(outdir)])
    assert status == 2 and len(lines) == 1
    assert ("drs_joint.tsv exists without the configuration file drs_joint.tsv.config.json"
            in lines[0])
    assert files_under(outdir) == before


def test_the_embedded_default_refuses_a_result_of_another_configuration_before_writing(
    certify_main, tiny_checkpoints, tmp_path
):
    outdir = tmp_path / "out"
    # A finished run of another model where the embedded default puts denoised RS.
    assert certify_main(rs_args(tiny_checkpoints["full"], outdir / "denoised_rs.tsv",
                                "--max", "1")) == 0
    before = files_under(outdir)
    status, lines = run_in_process(
        certify_main, ["--N0", "5", "--N", "10", "--max", "1", "--device", "cpu",
                       "--outdir", str(outdir)])
    assert status == 2 and len(lines) == 1
    assert "denoised_rs.tsv was started with another configuration" in lines[0]
    assert files_under(outdir) == before


@pytest.mark.parametrize("suffix", ["/", "/.", "//"])
def test_an_outfile_that_names_a_folder_is_refused(certify_main, tiny_checkpoints, tmp_path,
                                                   suffix):
    outfile = str(tmp_path / "res") + suffix
    status, lines = run_in_process(certify_main, rs_args(tiny_checkpoints["full"], outfile))
    assert status == 2 and len(lines) == 1
    assert "names a directory" in lines[0]
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="names a directory"):
        check_output_file(outfile)


def test_check_output_file_still_takes_new_files_and_refuses_folders(tmp_path):
    check_output_file(tmp_path / "new.tsv")
    check_output_file(str(tmp_path / "new.tsv"))
    with pytest.raises(ValueError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(ValueError, match="names a directory"):
        check_output_file("..")


# -- item 10: a stale WORLD_SIZE ends in one line, not a hang ---------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stale_launch_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()), **extra}


def test_a_stale_world_size_ends_in_one_line_after_the_rendezvous_timeout(
    tiny_checkpoints, tmp_path
):
    env = stale_launch_env(DENOISED_DRS_RENDEZVOUS_TIMEOUT="2")
    started = time.monotonic()
    result = subprocess.run([sys.executable, SCRIPT, *rs_args(tiny_checkpoints["full"],
                                                              tmp_path / "out.tsv")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=90)
    assert time.monotonic() - started < 60
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("certify_diffusion.py: error: ")
    assert "WORLD_SIZE=2" in lines[0] and "DENOISED_DRS_RENDEZVOUS_TIMEOUT" in lines[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_rendezvous_timeout_is_refused(value, monkeypatch):
    from denoised_drs.launch import rendezvous_timeout

    monkeypatch.setenv("DENOISED_DRS_RENDEZVOUS_TIMEOUT", value)
    with pytest.raises(ValueError, match="DENOISED_DRS_RENDEZVOUS_TIMEOUT must be"):
        rendezvous_timeout()


def test_the_rendezvous_timeout_defaults_to_a_minute(monkeypatch):
    from denoised_drs.launch import rendezvous_timeout

    monkeypatch.delenv("DENOISED_DRS_RENDEZVOUS_TIMEOUT", raising=False)
    assert rendezvous_timeout() == 60.0
    monkeypatch.setenv("DENOISED_DRS_RENDEZVOUS_TIMEOUT", "2.5")
    assert rendezvous_timeout() == 2.5


# -- item 12: a config's data keys of the wrong type; out of memory ---------------------


@pytest.mark.parametrize("key, value, message", [
    ("data_dir", 5, "data_dir must be a path"),
    ("data_dir", ["a", "b"], "data_dir must be a path"),
    ("data_dir", "", "data_dir must be a path"),
    ("dataset", ["sample"], "dataset must be a name"),
    ("skip", "2", "skip must be a positive integer"),
    ("max", 2.5, "max must be a positive integer"),
    ("skip", True, "skip must be a positive integer"),
])
def test_a_config_with_data_keys_of_the_wrong_type_is_refused(
    certify_main, tiny_checkpoints, tmp_path, key, value, message
):
    config = tmp_path / "run.json"
    values = {"mode": "rs", "classifier": tiny_checkpoints["full"], "dataset": "sample",
              "n0": 10, "n": 20, "max": 2, "device": "cpu", key: value}
    config.write_text(json.dumps(values))
    status, lines = run_in_process(certify_main, ["--config", str(config),
                                                  "--outfile", str(tmp_path / "r.tsv")])
    assert status == 2 and len(lines) == 1, lines
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


@pytest.mark.parametrize("error", [
    MemoryError(),
    MemoryError("cannot allocate 2 EiB"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                 "can't allocate memory: you tried to allocate 800000000000 bytes."),
], ids=["bare MemoryError", "MemoryError", "torch OutOfMemoryError", "CPU allocator"])
def test_running_out_of_memory_ends_in_one_line_and_exit_2(error):
    def main() -> int:
        raise error

    status, lines = run_in_process(lambda _args: main(), [])
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("certify_diffusion.py: error: out of memory (")
    assert "pass a smaller --batch" in lines[0]
