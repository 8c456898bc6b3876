"""scripts/certify_diffusion.py end to end: processes, resuming, bad input.

Bad input runs in this process, through ``run_script`` as the command line does
(exit status and stderr included); one case also runs as a real process, for the
exit path itself.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
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

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "certify_diffusion.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(args, launcher=(sys.executable,), **kwargs):
    return subprocess.run([*launcher, SCRIPT, *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def certify_main():
    return load_module(SCRIPT, "certify_diffusion_script").main


def run_in_process(certify_main, args) -> subprocess.CompletedProcess:
    """``run(args)``'s result, the script run in this process through run_script."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_script(lambda: certify_main(args), SCRIPT)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    return subprocess.CompletedProcess(args, code, "", err.getvalue())


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    at = header.index("time")
    return [[c for i, c in enumerate(line.split("\t")) if i != at] for line in lines]


def drs_joint_args(ckpt, out, n="60"):
    return ["--dataset", "sample", "--max", "7", "--mode", "drs",
            "--classifier-l", ckpt["l"], "--classifier-r", ckpt["r"],
            "--denoiser", ckpt["denoiser"], "--denoise", "joint", "--sigma", "0.25",
            "--N0", "10", "--N", n, "--batch", "32",
            "--outfile", str(out), "--device", "cpu"]


@pytest.mark.slow
def test_two_processes_equal_one_process(tiny_checkpoints, tmp_path):
    one = run(drs_joint_args(tiny_checkpoints, tmp_path / "one.tsv"))
    assert one.returncode == 0, one.stderr
    # Two processes that really shard (`accelerate launch --cpu` would start one; its
    # --multi_gpu launcher starts torch.distributed's): on a machine without accelerator
    # they join on the CPU even without --device cpu.
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no")
    args = drs_joint_args(tiny_checkpoints, tmp_path / "two.tsv")
    if not torch.cuda.is_available():
        args = args[:-2]
        assert args[-2] == "--outfile"
    two = run(args, launcher=launcher)
    assert two.returncode == 0, two.stderr
    assert "two.tsv: 2 processes, one part file each" in two.stderr
    expected = rows_without_time(tmp_path / "one.tsv")
    assert expected[0] == ["idx", "label", "predict", "radius", "correct", "pA_l", "pA_r",
                           "count_l", "count_r", "radius_paper", "nonfinite", "n_used"]
    assert [row[0] for row in expected[1:]] == [str(i) for i in range(7)]
    assert rows_without_time(tmp_path / "two.tsv") == expected
    assert not list(tmp_path.glob("*.part*"))
    assert (tmp_path / "two.tsv.config.json").is_file()
    # The configuration saved beside a result repeats it, the data selection included.
    again = run(["--config", str(tmp_path / "one.tsv.config.json"), "--outfile",
                 str(tmp_path / "again.tsv")])
    assert again.returncode == 0, again.stderr
    assert rows_without_time(tmp_path / "again.tsv") == expected


def test_killed_run_resumes_to_the_same_result(certify_main, tiny_checkpoints, tmp_path):
    args = ["--dataset", "sample", "--max", "40", "--skip", "2", "--mode", "rs",
            "--classifier", tiny_checkpoints["full"], "--sigma", "0.5", "--N0", "10", "--N", "3000",
            "--batch", "500", "--device", "cpu"]
    reference = run_in_process(certify_main, [*args, "--outfile", str(tmp_path / "ref.tsv")])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed.tsv"
    process = subprocess.Popen([sys.executable, SCRIPT, *args, "--outfile", str(out)], env=ENV,
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "killed.tsv.part0"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 4):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the final file appears only complete
    done = part.read_text().count("\n") - 1
    assert 0 < done < 20
    resumed = run_in_process(certify_main, [*args, "--outfile", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert rows_without_time(out) == rows_without_time(tmp_path / "ref.tsv")
    # Resuming under another configuration is refused, and the result stays intact.
    before = out.read_text()
    again = run_in_process(certify_main, [*args[:-4], "--sigma", "0.25", "--device", "cpu",
                                          "--outfile", str(out)])
    assert again.returncode == 2 and "another configuration" in again.stderr
    assert out.read_text() == before


BAD_INPUTS = {
    "unknown dataset": (["--dataset", "mnist3d"], "unknown dataset"),
    "missing folder": (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"],
                       "nonexistent"),
    "missing checkpoint": (["--classifier", "/nonexistent/model.pt"], "not found"),
    "sigma <= 0": (["--sigma", "0"], "sigma"),
    "n0 > n": (["--N0", "500", "--N", "100"], "N0"),
    "alpha outside (0, 1)": (["--alpha", "1.5"], "alpha"),
    "image size the denoiser cannot take": (["--denoiser", "DENOISER_DEEP"], "multiples of 8"),
    "unknown preset": (["--denoiser", "imagenet512"], "unknown denoiser"),
    "corrupt checkpoint": (["--classifier", "INPUTS/text.pt"],
                           "is not a checkpoint this library reads"),
    "classifier folder that is no model": (["--classifier", "INPUTS"], "holds no config.json"),
    "config value of the wrong type": (["--config", "INPUTS/wrong_type.json"],
                                       "n must be an integer"),
    "malformed config": (["--config", "INPUTS/broken.json"], "cannot parse configuration file"),
    "negative seed": (["--seed", "-1"], "seed"),
    "skip 0": (["--skip", "0"], "skip must be a positive integer"),
    "unknown device": (["--device", "tpu9"], "device"),
    "output is a directory": (["--outfile", "INPUTS"], "is a directory"),
    "compile mode with compile off": (["--no-compile", "--compile-mode", "default"],
                                      "compile is off"),
    "batch neither a number nor auto": (["--batch", "many"], "positive integer or auto"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_no_file(certify_main, tiny_checkpoints, tmp_path, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "text.pt").write_text("not a checkpoint\n")
    (inputs / "wrong_type.json").write_text('{"mode": "rs", "classifier": "c.pt", "n": "abc"}')
    (inputs / "broken.json").write_text('{"mode": "rs",\n')
    extra, message = BAD_INPUTS[case]
    extra = [tiny_checkpoints["denoiser_deep"] if a == "DENOISER_DEEP"
             else a.replace("INPUTS", str(inputs))
             for a in extra]
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", tiny_checkpoints["full"],
            "--N0", "10", "--N", "20", "--max", "3", "--device", "cpu",
            "--outfile", str(tmp_path / "out.tsv")]
    result = run_in_process(certify_main, [*args, *extra])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == [inputs]
    assert sorted(p.name for p in inputs.iterdir()) == ["broken.json", "text.pt", "wrong_type.json"]


def test_a_real_process_exits_with_one_line(tiny_checkpoints, tmp_path):
    """The process itself: exit status 2, one line on stderr, no file (run_script's exit path)."""
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", tiny_checkpoints["full"],
            "--N0", "10", "--N", "20", "--max", "3", "--device", "cpu",
            "--outfile", str(tmp_path / "out.tsv")]
    result = run([*args, "--sigma", "0"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("certify_diffusion.py: error: ") and "sigma" in lines[0]
    assert not list(tmp_path.iterdir())


def test_a_damaged_result_file_is_refused_not_merged(certify_main, tiny_checkpoints, tmp_path):
    out = tmp_path / "out.tsv"
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", tiny_checkpoints["full"],
            "--N0", "10", "--N", "20", "--max", "3", "--device", "cpu", "--outfile", str(out)]
    assert run_in_process(certify_main, args).returncode == 0
    header = out.read_text().splitlines()[0]
    out.write_text(header + "\n0\tjunk\n")
    result = run_in_process(certify_main, args)
    assert result.returncode == 2 and "not a result row" in result.stderr
    assert out.read_text() == header + "\n0\tjunk\n"


# -- main(argv) directly (it raises what run_script turns into exit 2) ----------------


def rs_args(classifier, out, *extra):
    return ["--dataset", "sample", "--mode", "rs", "--classifier", str(classifier), "--N0", "10",
            "--N", "20", "--max", "3", "--device", "cpu", "--outfile", str(out), *extra]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_saved_configuration_identifies_checkpoints_and_data(certify_main, tiny_checkpoints,
                                                             tmp_path):
    from denoised_drs.pipeline import Pipeline

    out = tmp_path / "out.tsv"
    assert certify_main(rs_args(tiny_checkpoints["full"], out)) == 0
    saved = json.loads((tmp_path / "out.tsv.config.json").read_text())
    sha = hashlib.sha256(Path(tiny_checkpoints["full"]).read_bytes()).hexdigest()
    assert saved["content"]["classifier"] == [{"path": os.path.realpath(tiny_checkpoints["full"]),
                                               "sha256": sha}]
    data = saved["content"]["data"]
    assert (data["source"] == "bundled sample"
            and data["indices"] == {"start": 0, "step": 1, "count": 3})
    assert len(data["sha256"]) == 64
    assert (saved["dataset"], saved["skip"], saved["max"], saved["data_dir"]) == (
        "sample", 1, 3, None)
    # The saved file is still a configuration the API reads.
    assert Pipeline.from_file(tmp_path / "out.tsv.config.json").config.classifier == [
        tiny_checkpoints["full"]]


def test_resume_refuses_a_replaced_checkpoint(certify_main, tiny_checkpoints, tmp_path):
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    shutil.copy(tiny_checkpoints["full"], model)
    out = tmp_path / "out.tsv"
    assert certify_main(rs_args(model, out, "--max", "2")) == 0
    write_classifier(model, "full", seed=7)  # same path, other weights
    before = files_under(tmp_path)
    with pytest.raises(ValueError, match=r"the classifier file .*model.pt changed "
                                         r"since the run began \(sha256"):
        certify_main(rs_args(model, out))
    assert files_under(tmp_path) == before


def test_resume_accepts_other_spellings_devices_batches_and_a_larger_max(
    certify_main, tiny_checkpoints, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_checkpoints["full"], tmp_path / "model.pt")
    (tmp_path / "link.pt").symlink_to(tmp_path / "model.pt")
    assert certify_main(rs_args("model.pt", "ref.tsv", "--max", "5")) == 0
    assert certify_main(rs_args("model.pt", "out.tsv")) == 0
    for spelling in ("./model.pt", str(tmp_path / "model.pt"), "link.pt"):
        assert certify_main(rs_args(spelling, "out.tsv", "--batch", "7")) == 0
    # Extending a finished run: the rows written stay, the new ones are added.
    first = rows_without_time(tmp_path / "out.tsv")
    assert certify_main(rs_args("model.pt", "./out.tsv", "--max", "5", "--batch", "3")) == 0
    extended = rows_without_time(tmp_path / "out.tsv")
    assert extended[: len(first)] == first and len(extended) == 6
    assert extended == rows_without_time(tmp_path / "ref.tsv")
    # ... and the shorter selection may resume the extended run again.
    assert certify_main(rs_args("model.pt", "out.tsv")) == 0
    assert rows_without_time(tmp_path / "out.tsv") == extended


def test_resume_accepts_compile_switched_on_or_off(certify_main, tiny_checkpoints, tmp_path,
                                                   compile_calls):
    compiled = compile_calls.modules
    denoised = ["--denoiser", tiny_checkpoints["denoiser"], "--N", "10", "--N0", "5"]
    assert certify_main(rs_args(tiny_checkpoints["full"], tmp_path / "ref.tsv", *denoised)) == 0
    out = tmp_path / "out.tsv"
    assert certify_main(rs_args(tiny_checkpoints["full"], out, *denoised, "--max", "1")) == 0
    assert certify_main(rs_args(tiny_checkpoints["full"], out, *denoised, "--max", "2",
                                "--compile")) == 0
    assert len(compiled) == 1
    assert certify_main(rs_args(tiny_checkpoints["full"], out, *denoised, "--no-compile")) == 0
    assert len(compiled) == 1
    assert rows_without_time(out) == rows_without_time(tmp_path / "ref.tsv")


def test_resume_refuses_other_data(certify_main, tiny_checkpoints, tmp_path):
    from denoised_drs.data import SAMPLE_PATH

    with np.load(SAMPLE_PATH) as arrays:
        images, labels, indices = arrays["images"], arrays["labels"], arrays["indices"]
    np.savez(tmp_path / "same.npz", images=images, labels=labels, indices=indices)
    changed = images.copy()
    changed[1, 3, 3] ^= 1
    np.savez(tmp_path / "changed.npz", images=changed, labels=labels, indices=indices)
    out = tmp_path / "out.tsv"
    assert certify_main(rs_args(tiny_checkpoints["full"], out)) == 0
    # The same images from another file are the same run.
    assert certify_main(rs_args(tiny_checkpoints["full"], out, "--data-dir",
                                str(tmp_path / "same.npz"))) == 0
    with pytest.raises(ValueError, match="images or labels of the 3 images it certified changed"):
        certify_main(rs_args(tiny_checkpoints["full"], out, "--data-dir",
                             str(tmp_path / "changed.npz")))
    # The file holds a row of the changed image, even when the new selection stops before it.
    with pytest.raises(ValueError, match="images it certified changed"):
        certify_main(rs_args(tiny_checkpoints["full"], out, "--data-dir",
                             str(tmp_path / "changed.npz"), "--max", "1"))
    # A change outside the certified images is no change to this run.
    later = images.copy()
    later[5, 3, 3] ^= 1
    np.savez(tmp_path / "later.npz", images=later, labels=labels, indices=indices)
    assert certify_main(rs_args(tiny_checkpoints["full"], out, "--data-dir",
                                str(tmp_path / "later.npz"))) == 0


def test_resume_refuses_changed_settings_and_configurations_without_hashes(
    certify_main, tiny_checkpoints, tmp_path
):
    out = tmp_path / "out.tsv"
    assert certify_main(rs_args(tiny_checkpoints["full"], out)) == 0
    with pytest.raises(ValueError, match=r"another configuration: n was 20, now 40;"):
        certify_main(rs_args(tiny_checkpoints["full"], out, "--N", "40"))
    saved = tmp_path / "out.tsv.config.json"
    values = json.loads(saved.read_text())
    del values["content"]
    saved.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="records no content hashes"):
        certify_main(rs_args(tiny_checkpoints["full"], out))


def test_output_names_with_pattern_characters(certify_main, tiny_checkpoints, tmp_path):
    reference = tmp_path / "ref.tsv"
    assert certify_main(rs_args(tiny_checkpoints["full"], reference)) == 0
    # Another run's progress, whose name the pattern a*.tsv.part* would match.
    other = tmp_path / "ab.tsv.part0"
    other.write_text("progress of another run\n")
    for name in ("r[1].tsv", "a*.tsv"):
        assert certify_main(rs_args(tiny_checkpoints["full"], tmp_path / name)) == 0
        assert rows_without_time(tmp_path / name) == rows_without_time(reference)
        assert not (tmp_path / f"{name}.part0").exists()
    assert other.read_text() == "progress of another run\n"


@pytest.mark.parametrize("labels, shape, message", [
    ([0, -1, 2, 3], (4, 28, 28), r"label\(s\) lie outside \[0, 10\)"),
    ([0, 1, 2, 3], (4, 3, 28, 28), "do not fit the models.*got 3 channels"),
    ([0, 1, 2, 3], (4, 28, 28, 3), "channels-last"),
])
def test_bad_labels_and_rgb_images_are_refused_before_any_file(
    certify_main, tiny_checkpoints, tmp_path, labels, shape, message
):
    data = tmp_path / "data.npz"
    np.savez(data, images=np.zeros(shape, dtype=np.uint8), labels=np.array(labels),
             indices=np.arange(4))
    with pytest.raises(ValueError, match=message):
        certify_main(rs_args(tiny_checkpoints["full"], tmp_path / "out" / "r.tsv",
                             "--data-dir", str(data)))
    assert not (tmp_path / "out").exists()


def test_the_embedded_default_compiles_each_runs_step(certify_main, tmp_path, compile_calls):
    args = ["--compile", "--N0", "5", "--N", "10", "--max", "1", "--device", "cpu",
            "--outdir", str(tmp_path)]
    assert certify_main(args) == 0
    # Each of the five runs compiles its step: RS, DRS, denoised RS, DRS joint, DRS split.
    assert len(compile_calls.modules) == 5
    assert (tmp_path / "table.md").is_file()
