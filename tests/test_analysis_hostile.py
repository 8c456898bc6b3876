"""Issue 23, analysis side: rows the library never writes, torn rows, adaptive targets
written as 6-decimal floors, --every beyond 64 bits, outputs that exist, and the
certificate kind of simulate_adaptive.py (fast, offline, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from module_files import load_module
from scipy.stats import norm

from denoised_drs import analysis, cli
from denoised_drs.bounds import branch_alpha, clopper_pearson_lower

REPO = Path(__file__).resolve().parents[1]
ANALYZE = REPO / "scripts" / "analyze.py"
SIMULATE = REPO / "benchmarks" / "simulate_adaptive.py"
RS_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA\tcount\tnonfinite\tn_used"
DRS_HEADER = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_l\tpA_r\tcount_l\tcount_r"
              "\tradius_paper\tnonfinite\tn_used")
# Three rows as an adaptive --radii 0.3 0.6 run wrote them before targets were exact:
# the targets floored to 6 decimals, and an abstain.
ADAPTIVE_ROWS = [
    "0\t3\t3\t0.299999\t1\t1.000\t0.97\t385\t0\t400",
    "1\t4\t4\t0.599999\t1\t1.000\t0.99\t400\t0\t400",
    "2\t5\t-1\t0.000000\t0\t1.000\t0.52\t210\t0\t400",
]


def write(path: Path, header: str, rows: list[str], end: str = "\n") -> Path:
    path.write_text("\n".join([header, *rows]) + end)
    return path


def rs_config(radii: list[float] | None) -> dict:
    """An RS configuration as certify_diffusion.py saves it beside its result."""
    return {"mode": "rs", "classifier": ["checkpoints/m.pt"], "classifier_l": [],
            "classifier_r": [], "denoiser": None, "denoise": "joint", "sigma": 0.25,
            "sigma_r": None, "n0": 100, "n": 400, "alpha": 0.001, "batch": 400, "seed": 0,
            "adaptive": radii is not None, "radii": radii, "tolerance": None,
            "dataset": "fashion-mnist", "skip": 1, "max": None}


def run_main(script: Path, argv: list[str]) -> int:
    """The exit status of the script's ``main(argv)`` run in-process as the script runs it."""
    main = load_module(script, script.stem).main
    with pytest.raises(SystemExit) as exit_:
        cli.run_script(lambda: main(argv), str(script))
    return exit_.value.code


def one_error_line(capsys, fragment: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze.py: error:"), captured.err
    assert fragment in lines[0], lines[0]
    assert captured.out == ""


# ------------------------------------------------------- item 1: adaptive targets


def test_targets_floored_to_6_decimals_read_as_the_targets_of_the_saved_config(tmp_path):
    out = write(tmp_path / "run.tsv", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "run.tsv.config.json").write_text(json.dumps(rs_config([0.3, 0.6]), indent=2))
    results = analysis.load_results(out)
    assert results.radius.tolist() == [0.3, 0.6, 0.0]
    assert analysis.certified_accuracy(results.correct, results.radius, [0.3, 0.6]).tolist() \
        == pytest.approx([2 / 3, 1 / 3])
    # An unfinished run (its rows in OUT.part0, its config beside OUT), read either way.
    out.rename(tmp_path / "run.tsv.part0")
    assert analysis.load_run(out).radius.tolist() == [0.3, 0.6, 0.0]
    assert analysis.load_results(tmp_path / "run.tsv.part0").radius.tolist() == [0.3, 0.6, 0.0]


def test_a_floor_shared_by_two_targets_is_never_read_above_what_was_certified(tmp_path):
    # Targets 0.299999 and 0.3 both floor to 0.299999: a row there certified at least
    # 0.299999 and perhaps not 0.3, so it must read as 0.299999.
    out = write(tmp_path / "run.tsv", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "run.tsv.config.json").write_text(json.dumps(rs_config([0.299999, 0.3, 0.6])))
    assert analysis.load_results(out).radius.tolist() == [0.299999, 0.6, 0.0]
    (tmp_path / "run.tsv.config.json").write_text(json.dumps(rs_config([0.1, 0.1000001, 0.6])))
    assert analysis.load_results(out).radius.tolist() == [0.299999, 0.6, 0.0]


def test_files_with_exact_targets_are_read_as_written(tmp_path):
    # Since targets are written exactly, adaptive files carry the look columns: no row of
    # theirs is a floor standing for a target.
    rows = [row + "\t400\t0.001" for row in ADAPTIVE_ROWS]
    out = write(tmp_path / "run.tsv", RS_HEADER + "\tn_look\talpha_look", rows)
    (tmp_path / "run.tsv.config.json").write_text(json.dumps(rs_config([0.3, 0.6])))
    assert analysis.load_results(out).radius.tolist() == [0.299999, 0.599999, 0.0]


def test_only_a_part_file_can_end_in_a_torn_row(tmp_path):
    # A finished file is written whole and renamed: a last line without a line break
    # (a hand edit) is a row like any other, checked as such.
    finished = write(tmp_path / "done.tsv", RS_HEADER, ADAPTIVE_ROWS, end="")
    results = analysis.load_results(finished)
    assert results.idx.tolist() == [0, 1, 2] and results.left_out == ()
    part = write(tmp_path / "run.tsv.part0", RS_HEADER, ADAPTIVE_ROWS, end="")
    assert analysis.load_results(part).idx.tolist() == [0, 1]


def test_analyze_tabulates_an_unfinished_radii_run_at_its_targets(tmp_path, capsys):
    write(tmp_path / "run.tsv.part0", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "run.tsv.config.json").write_text(json.dumps(rs_config([0.3, 0.6])))
    assert run_main(ANALYZE, [str(tmp_path / "run.tsv.part0"), "--names", "adaptive",
                              "--radii", "0.3", "0.6", "--out", str(tmp_path / "a")]) == 0
    assert "| adaptive | **66.7** | **33.3** | **0.300** | 400 |" in capsys.readouterr().out


def test_radii_are_compared_exactly_otherwise(tmp_path):
    # No config, a config without radii, or a radius that is not a target's floor.
    write(tmp_path / "plain.tsv", RS_HEADER, ADAPTIVE_ROWS)
    assert analysis.load_results(tmp_path / "plain.tsv").radius.tolist() == [0.299999, 0.599999, 0]
    write(tmp_path / "fixed.tsv", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "fixed.tsv.config.json").write_text(json.dumps(rs_config(None)))
    assert analysis.load_results(tmp_path / "fixed.tsv").radius.tolist() == [0.299999, 0.599999, 0]
    write(tmp_path / "other.tsv", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "other.tsv.config.json").write_text(json.dumps(rs_config([0.3000001, 0.7])))
    assert analysis.load_results(tmp_path / "other.tsv").radius.tolist() == [0.299999, 0.599999, 0]


@pytest.mark.parametrize(("config", "fragment"), [
    ("{not json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({**rs_config(None), "radii": "0.3"}), "radii must be a list"),
    (json.dumps({**rs_config(None), "radii": [0.3, "x"]}), "radii must be a list"),
    (json.dumps({**rs_config(None), "radii": [0.3, float("nan")]}), "radii must be a list"),
    (json.dumps({**rs_config(None), "radii": [0.3, True]}), "radii must be a list"),
    ('{"radii": [1' + "0" * 400 + "]}", "radii must be a list"),
    ("[" * 100000 + "]" * 100000, "not a JSON object"),
])
def test_a_damaged_saved_config_is_refused_naming_it(tmp_path, config, fragment):
    write(tmp_path / "run.tsv", RS_HEADER, ADAPTIVE_ROWS)
    (tmp_path / "run.tsv.config.json").write_text(config)
    with pytest.raises(ValueError, match=f"run.tsv.config.json: .*{fragment}"):
        analysis.load_results(tmp_path / "run.tsv")


# ------------------------------------------------ item 3: torn and impossible rows


def test_a_torn_last_row_is_never_a_result(tmp_path):
    # The last row's n_used cut to "40" from "400", no newline: a row being written.
    rows = [*ADAPTIVE_ROWS[:2], ADAPTIVE_ROWS[2][:-2]]
    write(tmp_path / "run.tsv.part0", RS_HEADER, rows, end="")
    for results in (analysis.load_results(tmp_path / "run.tsv.part0"),
                    analysis.load_run(tmp_path / "run.tsv")):
        assert results.idx.tolist() == [0, 1]
        assert results.left_out == (f"{tmp_path / 'run.tsv.part0'}:4",)
    complete = write(tmp_path / "done.tsv", RS_HEADER, ADAPTIVE_ROWS)
    assert analysis.load_results(complete).left_out == ()


def test_analyze_warns_in_one_line_when_it_leaves_a_torn_row_out(tmp_path, capsys):
    write(tmp_path / "run.tsv.part0", RS_HEADER, [*ADAPTIVE_ROWS[:2], "2\t5\t-1\t0.0"], end="")
    assert run_main(ANALYZE, [str(tmp_path / "run.tsv.part0"), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "torn" in line]
    assert warnings == [f"analyze.py: warning: {tmp_path / 'run.tsv.part0'}:4: torn last line "
                        "(no newline: a row being written or a killed process) left out"]
    assert "| run.tsv | **100.0** |" in captured.out  # 2 rows, both correct


@pytest.mark.parametrize(("row", "fragment"), [
    ("0\t3\t3\t0.5\t1\t1.0\t0.97\t385\t0\t-400", "bad value '-400' in column 'n_used'"),
    ("0\t3\t3\t0.5\t1\t1.0\t0.97\t-1\t0\t400", "bad value '-1' in column 'count'"),
    ("0\t3\t3\t0.5\t1\t1.0\t1.5\t385\t0\t400", "bad value '1.5' in column 'pA'"),
    ("0\t3\t3\t0.5\t1\t1.0\tnan\t385\t0\t400", "bad value 'nan' in column 'pA'"),
    ("0\t3\t3\t0.5\t1\t1.0\t0.97\t385\t-2\t400", "bad value '-2' in column 'nonfinite'"),
    ("-1\t3\t3\t0.5\t1\t1.0\t0.97\t385\t0\t400", "bad value '-1' in column 'idx'"),
    ("0\t-3\t-3\t0.5\t1\t1.0\t0.97\t385\t0\t400", "bad value '-3' in column 'label'"),
    ("1e300\t3\t3\t0.5\t1\t1.0\t0.97\t385\t0\t400", "bad value '1e300' in column 'idx'"),
    ("9223372036854775808\t3\t3\t0.5\t1\t1.0\t0.97\t385\t0\t400", "in column 'idx'"),
    ("1_0\t3\t3\t0.5\t1\t1.0\t0.97\t385\t0\t400", "bad value '1_0' in column 'idx'"),
    ("0\t3\t3\t0.5\t2\t1.0\t0.97\t385\t0\t400", "correct must be 0 or 1"),
    ("0\t3\t3\t0.5\t1\t1.0\t0.97\t401\t0\t400", "count 401 exceeds n_used 400"),
])
def test_rows_this_library_never_writes_are_refused_naming_file_and_line(
        tmp_path, capsys, row, fragment):
    path = write(tmp_path / "run.tsv", RS_HEADER, [ADAPTIVE_ROWS[1], row])
    with pytest.raises(ValueError, match="run.tsv:3: ") as error:
        analysis.load_results(path)
    assert fragment in str(error.value)
    assert run_main(ANALYZE, [str(path), "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "run.tsv:3: ")
    assert not (tmp_path / "a").exists()


def test_a_binary_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "run.tsv").write_bytes(RS_HEADER.encode() + b"\n\xff\xfe\x00\x01\n")
    assert run_main(ANALYZE, [str(tmp_path / "run.tsv"), "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "run.tsv: not a UTF-8 text file")


def test_a_fifo_or_a_folder_is_refused_without_reading_it(tmp_path, capsys):
    os.mkfifo(tmp_path / "run.tsv")  # reading it would wait for a writer forever
    (tmp_path / "dir.tsv").mkdir()
    for path in ("run.tsv", "dir.tsv"):
        assert run_main(ANALYZE, [str(tmp_path / path), "--out", str(tmp_path / "a")]) == 2
        one_error_line(capsys, f"{path}: not a regular file")


# ------------------------------------------------------ item 8: existing outputs


def test_no_output_replaces_an_existing_file_without_overwrite(tmp_path, capsys):
    tsv = write(tmp_path / "run.tsv", RS_HEADER, ADAPTIVE_ROWS)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    assert run_main(ANALYZE, ["--bounds-plot", str(checkpoint)]) == 2
    one_error_line(capsys, f"{checkpoint} exists; pass --overwrite to replace it")
    assert checkpoint.read_bytes() == b"weights"
    # The tables in --out follow the same rule, checked before anything is written.
    out = tmp_path / "a"
    out.mkdir()
    (out / "table.tex").write_text("mine")
    assert run_main(ANALYZE, [str(tsv), "--out", str(out), "--bounds-plot",
                              str(tmp_path / "b.png")]) == 2
    one_error_line(capsys, "table.tex exists; pass --overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "model.pt", "run.tsv"]
    assert [p.name for p in out.iterdir()] == ["table.tex"]
    assert run_main(ANALYZE, [str(tsv), "--out", str(out), "--bounds-plot", str(checkpoint),
                              "--overwrite"]) == 0
    assert checkpoint.read_bytes().startswith(b"\x89PNG")
    assert (out / "table.tex").read_text() != "mine"


# --------------------------------------------------- item 12: --every beyond 64 bits


def test_every_beyond_64_bits_keeps_image_0_without_overflow(tmp_path, capsys):
    tsv = write(tmp_path / "run.tsv", RS_HEADER, ADAPTIVE_ROWS)
    huge = 99999999999999999999999
    assert analysis.load_results(tsv).every(huge).idx.tolist() == [0]
    assert run_main(ANALYZE, [str(tsv), "--every", str(huge), "--out", str(tmp_path / "a")]) == 0
    assert "| run | **100.0** |" in capsys.readouterr().out
    only_later = write(tmp_path / "later.tsv", RS_HEADER, ADAPTIVE_ROWS[1:])
    assert run_main(ANALYZE, [str(only_later), "--every", str(huge), "--out",
                              str(tmp_path / "b")]) == 2
    one_error_line(capsys, f"no image index is a multiple of {huge}")


# ------------------------------------------- item 16: simulate_adaptive.py's radius


def drs_config(denoise: str) -> dict:
    return {**rs_config(None), "mode": "drs", "classifier": [], "classifier_l": ["l.pt"],
            "classifier_r": ["r.pt"], "denoiser": "checkpoints/d.pt", "denoise": denoise,
            "sigma": 0.25}


def unanimous_drs(tmp_path: Path, name: str, config: dict | None) -> Path:
    # Every vote of both branches for the label: the simulated bounds are fixed.
    rows = [f"{i}\t1\t1\t0.5\t1\t1.0\t0.99\t0.99\t400\t400\t0.6\t0\t400" for i in range(3)]
    path = write(tmp_path / name, DRS_HEADER, rows)
    if config is not None:
        (tmp_path / f"{name}.config.json").write_text(json.dumps(config))
    return path


def simulated_fixed_acr(path: Path, *flags: str) -> float:
    out = path.with_suffix(".json")
    assert run_main(SIMULATE, [str(path), "--n-max", "1000", "--N0", "10", "--tolerance", "0.1",
                               "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())["rows"][0]["acr"]


def test_a_joint_denoising_file_is_simulated_with_the_coupled_radius(tmp_path, capsys):
    z = norm.ppf(clopper_pearson_lower(1000, 1000, branch_alpha(0.001, 2)))
    joint = unanimous_drs(tmp_path, "joint.tsv", drs_config("joint"))
    assert simulated_fixed_acr(joint) == pytest.approx(0.25 * (z + z) / 2)
    split = unanimous_drs(tmp_path, "split.tsv", drs_config("split"))
    assert simulated_fixed_acr(split) == pytest.approx((z + z) / np.sqrt(2 / 0.25**2))
    bare = unanimous_drs(tmp_path, "bare.tsv", None)
    assert simulated_fixed_acr(bare, "--kind", "coupled", "--sigma", "0.25") \
        == pytest.approx(0.25 * z)


@pytest.mark.parametrize(("config", "flags", "fragment"), [
    (None, ["--sigma", "0.25"], "no saved configuration"),
    (None, ["--kind", "coupled"], "give --sigma"),
    ("joint", ["--kind", "independent"], "--kind independent, but"),
    ("joint", ["--sigma", "0.5"], "--sigma 0.5, but"),
    ("rs", [], "has the counts of 2 branch(es), but"),
])
def test_simulate_needs_the_runs_kind_and_sigma_and_refuses_contradictions(
        tmp_path, capsys, config, flags, fragment):
    configs = {None: None, "rs": rs_config(None), "joint": drs_config("joint")}
    path = unanimous_drs(tmp_path, "run.tsv", configs[config])
    assert run_main(SIMULATE, [str(path), "--tolerance", "0.1", *flags]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simulate_adaptive.py: error:")
    assert fragment in lines[0], lines[0]


def test_simulate_handles_k_parts_with_the_kway_radius(tmp_path):
    k = 3
    header = ("idx\tlabel\tpredict\tradius\tcorrect\ttime\t" + "\t".join(
        [f"pA_{j}" for j in range(1, k + 1)] + [f"count_{j}" for j in range(1, k + 1)])
        + "\tradius_paper\tnonfinite\tn_used")
    rows = [f"{i}\t1\t1\t0.5\t1\t1.0\t" + "\t".join(["0.99"] * k + ["400"] * k) + "\t0.6\t0\t400"
            for i in range(2)]
    path = write(tmp_path / "k3.tsv", header, rows)
    config = {**rs_config(None), "mode": "drs", "classifier": [], "partition": "diagonal-3",
              "branches": [["1.pt"], ["2.pt"], ["3.pt"]], "denoiser": None, "sigma": 0.25}
    (tmp_path / "k3.tsv.config.json").write_text(json.dumps(config))
    from denoised_drs.bounds import kway_radius
    bound = clopper_pearson_lower(1000, 1000, branch_alpha(0.001, k))
    assert simulated_fixed_acr(path) == pytest.approx(kway_radius([bound] * k, [0.25] * k))
