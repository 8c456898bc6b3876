"""scripts/certify_diffusion.py end to end: processes, resuming, bad input."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "certify_diffusion.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(args, launcher=(sys.executable,), **kwargs):
    return subprocess.run([*launcher, SCRIPT, *args], capture_output=True, text=True, env=ENV,
                          cwd=REPO, timeout=300, **kwargs)


def rows_without_time(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    at = header.index("time")
    return [[c for i, c in enumerate(line.split("\t")) if i != at] for line in lines]


def drs_joint_args(ckpt, out, n="60"):
    return ["--dataset", "sample", "--max", "7", "--mode", "drs",
            "--classifier-l", ckpt["l"], "--classifier-r", ckpt["r"], "--denoiser", ckpt["denoiser"],
            "--denoise", "joint", "--sigma", "0.25", "--N0", "10", "--N", n, "--batch", "32",
            "--outfile", str(out), "--device", "cpu"]


def test_two_processes_equal_one_process(tiny_checkpoints, tmp_path):
    one = run(drs_joint_args(tiny_checkpoints, tmp_path / "one.tsv"))
    assert one.returncode == 0, one.stderr
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    two = run(drs_joint_args(tiny_checkpoints, tmp_path / "two.tsv"), launcher=launcher)
    assert two.returncode == 0, two.stderr
    expected = rows_without_time(tmp_path / "one.tsv")
    assert expected[0] == ["idx", "label", "predict", "radius", "correct", "pA_l", "pA_r", "count_l",
                           "count_r", "radius_paper", "nonfinite", "n_used"]
    assert [row[0] for row in expected[1:]] == [str(i) for i in range(7)]
    assert rows_without_time(tmp_path / "two.tsv") == expected
    assert not list(tmp_path.glob("*.part*"))
    assert (tmp_path / "two.tsv.config.json").is_file()
    # The configuration saved beside a result repeats it, the data selection included.
    again = run(["--config", str(tmp_path / "one.tsv.config.json"), "--outfile", str(tmp_path / "again.tsv")])
    assert again.returncode == 0, again.stderr
    assert rows_without_time(tmp_path / "again.tsv") == expected


def test_killed_run_resumes_to_the_same_result(tiny_checkpoints, tmp_path):
    args = ["--dataset", "sample", "--max", "40", "--skip", "2", "--mode", "rs",
            "--classifier", tiny_checkpoints["full"], "--sigma", "0.5", "--N0", "10", "--N", "3000",
            "--batch", "500", "--device", "cpu"]
    reference = run([*args, "--outfile", str(tmp_path / "ref.tsv")])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed.tsv"
    process = subprocess.Popen([sys.executable, SCRIPT, *args, "--outfile", str(out)], env=ENV, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "killed.tsv.part0"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or part.read_text().count("\n") < 4):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the final file appears only complete
    done = part.read_text().count("\n") - 1
    assert 0 < done < 20
    resumed = run([*args, "--outfile", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    assert rows_without_time(out) == rows_without_time(tmp_path / "ref.tsv")
    # Resuming under another configuration is refused, and the result stays intact.
    before = out.read_text()
    again = run([*args[:-4], "--sigma", "0.25", "--device", "cpu", "--outfile", str(out)])
    assert again.returncode == 2 and "another configuration" in again.stderr
    assert out.read_text() == before


BAD_INPUTS = {
    "unknown dataset": (["--dataset", "mnist3d"], "unknown dataset"),
    "missing folder": (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"], "nonexistent"),
    "missing checkpoint": (["--classifier", "/nonexistent/model.pt"], "not found"),
    "sigma <= 0": (["--sigma", "0"], "sigma"),
    "n0 > n": (["--N0", "500", "--N", "100"], "N0"),
    "alpha outside (0, 1)": (["--alpha", "1.5"], "alpha"),
    "image size the denoiser cannot take": (["--denoiser", "DENOISER_DEEP"], "multiples of 8"),
    "unknown preset": (["--denoiser", "imagenet512"], "unknown denoiser"),
    "corrupt checkpoint": (["--classifier", "INPUTS/text.pt"], "cannot read"),
    "checkpoint is a directory": (["--classifier", "INPUTS"], "not found"),
    "config value of the wrong type": (["--config", "INPUTS/wrong_type.json"], "n must be an integer"),
    "malformed config": (["--config", "INPUTS/broken.json"], "cannot parse configuration file"),
    "negative seed": (["--seed", "-1"], "seed"),
    "skip 0": (["--skip", "0"], "skip must be a positive integer"),
    "unknown device": (["--device", "tpu9"], "device"),
    "output is a directory": (["--outfile", "INPUTS"], "is a directory"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_no_file(tiny_checkpoints, tmp_path, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "text.pt").write_text("not a checkpoint\n")
    (inputs / "wrong_type.json").write_text('{"mode": "rs", "classifier": "c.pt", "n": "abc"}')
    (inputs / "broken.json").write_text('{"mode": "rs",\n')
    extra, message = BAD_INPUTS[case]
    extra = [tiny_checkpoints["denoiser_deep"] if a == "DENOISER_DEEP" else a.replace("INPUTS", str(inputs))
             for a in extra]
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", tiny_checkpoints["full"], "--N0", "10",
            "--N", "20", "--max", "3", "--device", "cpu", "--outfile", str(tmp_path / "out.tsv")]
    result = run([*args, *extra])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == [inputs]
    assert sorted(p.name for p in inputs.iterdir()) == ["broken.json", "text.pt", "wrong_type.json"]


def test_a_damaged_result_file_is_refused_not_merged(tiny_checkpoints, tmp_path):
    out = tmp_path / "out.tsv"
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", tiny_checkpoints["full"], "--N0", "10",
            "--N", "20", "--max", "3", "--device", "cpu", "--outfile", str(out)]
    assert run(args).returncode == 0
    header = out.read_text().splitlines()[0]
    out.write_text(header + "\n0\tjunk\n")
    result = run(args)
    assert result.returncode == 2 and "not a result row" in result.stderr
    assert out.read_text() == header + "\n0\tjunk\n"
