"""What a row needs to be re-derived (issue 23, item 14) and whose files it used (k >= 3).

An adaptive row reports the bounds of one look: ``n_look`` and ``alpha_look`` name it,
so every ``pA`` column is the Clopper-Pearson bound of its ``count`` at that look. A
k-part run records the sha256 of every branch file, so neither a resume nor a
``--config`` re-run can swap a branch unnoticed.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from module_files import load_module

from denoised_drs.bounds import clopper_pearson_lower
from denoised_drs.cli import run_script
from denoised_drs.models import ClassifierSpec, create_model, save_classifier

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py"
ONE = ["--dataset", "sample", "--N0", "10", "--N", "300", "--alpha", "0.01", "--batch", "100",
       "--device", "cpu", "--seed", "0"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    script = load_module(SCRIPT, "certify_provenance")
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_script(lambda: script.main(argv), "certify_diffusion.py")
        except SystemExit as stop:
            return stop.code or 0, err.getvalue()
    return 0, err.getvalue()


def rows(path: Path) -> list[dict[str, str]]:
    header, *lines = path.read_text().splitlines()
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


def write_classifier(path: Path, seed: int, **spec_options) -> str:
    torch.manual_seed(seed)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", **spec_options)
    save_classifier(path, create_model(spec.arch, **spec.model_options()).eval(), spec)
    return str(path)


@pytest.mark.parametrize("radii", [None, ["0.05", "0.1"]])
def test_an_adaptive_row_names_the_look_behind_its_bounds(tmp_path, radii):
    left = write_classifier(tmp_path / "l.pt", 1, branch="l", sigma=0.25)
    right = write_classifier(tmp_path / "r.pt", 2, branch="r", sigma=0.25)
    out = tmp_path / "adaptive.tsv"
    argv = [*ONE, "--mode", "drs", "--classifier-l", left, "--classifier-r", right,
            "--sigma", "0.25", "--max", "3", "--adaptive", "--outfile", str(out)]
    status, err = run_cli([*argv, *(["--radii", *radii] if radii else [])])
    assert status == 0, err
    assert out.read_text().splitlines()[0].split("\t")[-4:] == [
        "nonfinite", "n_used", "n_look", "alpha_look"]
    for row in rows(out):
        n_look, alpha_look = int(row["n_look"]), float(row["alpha_look"])
        assert 0 < n_look <= int(row["n_used"]) and 0 < alpha_look <= 0.01
        for side in ("l", "r"):
            # The file floors each bound to 8 decimals.
            bound = clopper_pearson_lower(int(row[f"count_{side}"]), n_look, alpha_look / 2)
            assert float(row[f"pA_{side}"]) == pytest.approx(bound, abs=1.1e-8)


def test_a_fixed_n_file_keeps_its_columns(tmp_path):
    full = write_classifier(tmp_path / "full.pt", 0, branch="full", sigma=0.25)
    out = tmp_path / "fixed.tsv"
    status, err = run_cli([*ONE, "--mode", "rs", "--classifier", full, "--sigma", "0.25",
                           "--max", "1", "--outfile", str(out)])
    assert status == 0, err
    assert out.read_text().splitlines()[0].split("\t")[-2:] == ["nonfinite", "n_used"]


def four_branches(folder: Path) -> list[str]:
    return [write_classifier(folder / f"part{j}.pt", j, branch=str(j), partition="polyphase-2x2",
                             sigma=0.125) for j in range(1, 5)]


def k4_argv(paths: list[str], out: Path, max_index: int) -> list[str]:
    branches = [arg for path in paths for arg in ("--branch", path)]
    return [*ONE, "--N", "20", "--mode", "drs", "--partition", "polyphase-2x2", *branches,
            "--sigma", "0.125", "--max", str(max_index), "--outfile", str(out)]


def test_a_k_part_run_records_every_branch_file_and_refuses_a_swapped_one(tmp_path):
    paths = four_branches(tmp_path)
    out = tmp_path / "k4.tsv"
    assert run_cli(k4_argv(paths, out, 1))[0] == 0
    recorded = json.loads((tmp_path / "k4.tsv.config.json").read_text())["content"]["branches"]
    assert [entry["path"] for entry in recorded] == [str(Path(p).resolve()) for p in paths]
    before = out.read_bytes(), (tmp_path / "k4.tsv.config.json").read_bytes()
    write_classifier(Path(paths[2]), 99, branch="3", partition="polyphase-2x2", sigma=0.125)
    status, err = run_cli(k4_argv(paths, out, 2))
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "the branches file" in err and "changed since the run began" in err
    assert (out.read_bytes(), (tmp_path / "k4.tsv.config.json").read_bytes()) == before


def test_a_config_rerun_of_a_k_part_run_checks_each_branch_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    paths = four_branches(Path("."))  # relative paths, as a user types them
    assert run_cli(k4_argv([Path(p).name for p in paths], Path("k4.tsv"), 1))[0] == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = str(run / "k4.tsv.config.json")
    status, err = run_cli(["--config", config, "--outfile", "again.tsv"])
    assert status == 0, err
    assert (elsewhere / "again.tsv").read_text().split("\n")[1].split("\t")[6:] == (
        (run / "k4.tsv").read_text().split("\n")[1].split("\t")[6:])
    write_classifier(run / "part2.pt", 99, branch="2", partition="polyphase-2x2", sigma=0.125)
    status, err = run_cli(["--config", config, "--outfile", "third.tsv"])
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "the branches file part2.pt recorded in" in err and "pass --branch" in err
    assert not (elsewhere / "third.tsv").exists()


def test_an_adaptive_run_begun_without_look_columns_resumes_in_its_own_layout(tmp_path):
    full = write_classifier(tmp_path / "full.pt", 0, branch="full", sigma=0.25)
    out = tmp_path / "older.tsv"
    argv = [*ONE, "--mode", "rs", "--classifier", full, "--sigma", "0.25", "--adaptive",
            "--outfile", str(out)]
    assert run_cli([*argv, "--max", "1"])[0] == 0
    # What a version before the look columns wrote: the same rows without them.
    out.write_text("".join("\t".join(line.split("\t")[:-2]) + "\n"
                           for line in out.read_text().splitlines()))
    status, err = run_cli([*argv, "--max", "3"])
    assert status == 0, err
    lines = out.read_text().splitlines()
    assert lines[0].split("\t")[-2:] == ["nonfinite", "n_used"] and len(lines) == 4
    assert {len(line.split("\t")) for line in lines} == {len(lines[0].split("\t"))}


def test_a_k_part_run_begun_without_branch_hashes_is_not_resumed_unchecked(tmp_path):
    paths = four_branches(tmp_path)
    out = tmp_path / "k4.tsv"
    assert run_cli(k4_argv(paths, out, 1))[0] == 0
    config = tmp_path / "k4.tsv.config.json"
    saved = json.loads(config.read_text())
    del saved["content"]["branches"]  # what a version before branch hashes wrote
    config.write_text(json.dumps(saved))
    before = out.read_bytes(), config.read_bytes()
    status, err = run_cli(k4_argv(paths, out, 2))
    assert status == 2 and "records no sha256 of its branches files" in err
    assert (out.read_bytes(), config.read_bytes()) == before
