"""Tests for denoised_drs.analysis and scripts/analyze.py (fast, offline, CPU)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from module_files import load_module

from denoised_drs import analysis, cli

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "analyze.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"

# Ten images: 6 correct (radii 0.1, 0.25, 0.25, 0.5, 0.75, 1.2), 2 wrong with positive
# radius (must never count), 2 abstains. Times in both formats.
ROWS = [
    (0, 3, 3, 0.10, 1, "1.5"),
    (1, 1, 1, 0.25, 1, "0:00:02.25"),
    (2, 2, 2, 0.25, 1, "2.0"),
    (3, 4, 4, 0.50, 1, "1 day, 0:00:01"),
    (4, 5, 5, 0.75, 1, "0.5"),
    (5, 6, 6, 1.20, 1, "0.5"),
    (6, 7, 0, 0.90, 0, "0.5"),
    (7, 8, 1, 0.30, 0, "0.5"),
    (8, 9, -1, 0.00, 0, "0.5"),
    (9, 0, -1, 0.00, 0, "0.5"),
]
RADII = [0.0, 0.25, 0.5, 0.75, 1.0]
# By hand: count correct rows with radius >= r, over 10 rows.
EXPECTED_ACCURACY = [0.6, 0.5, 0.3, 0.2, 0.1]
EXPECTED_ACR = (0.10 + 0.25 + 0.25 + 0.50 + 0.75 + 1.20) / 10  # 0.305


def write_tsv(path: Path, rows, header: str = HEADER, extra=None) -> Path:
    lines = [header]
    for i, row in enumerate(rows):
        fields = [str(value) for value in row]
        if extra is not None:
            fields += [str(value) for value in extra[i]]
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def rs_tsv(tmp_path: Path) -> Path:
    return write_tsv(tmp_path / "rs.tsv", ROWS)


@pytest.fixture
def drs_tsv(tmp_path: Path) -> Path:
    """A joint-denoising run with pA_l, pA_r and the paper's (larger) radius."""
    rows = [
        (0, 3, 3, 0.40, 1, "1.0"),
        (1, 1, 1, 0.60, 1, "1.0"),
        (2, 2, -1, 0.00, 0, "1.0"),
        (3, 4, 2, 0.20, 0, "1.0"),
    ]
    extra = [(0.9, 0.95, 0.57), (0.99, 0.99, 0.85), (0.4, 0.5, 0.0), (0.8, 0.7, 0.28)]
    header = HEADER + "\tpA_l\tpA_r\tradius_paper"
    return write_tsv(tmp_path / "drs.tsv", rows, header, extra)


# --------------------------------------------------------------------------- loading


def test_load_results_parses_columns_and_both_time_formats(rs_tsv: Path):
    results = analysis.load_results(rs_tsv)
    assert len(results) == 10
    np.testing.assert_array_equal(results.predict[-2:], [-1, -1])
    np.testing.assert_allclose(results.time[:4], [1.5, 2.25, 2.0, 86401.0])
    assert results.radius_paper is None and results.extra == {}


def test_load_results_keeps_extra_columns_and_paper_radius(drs_tsv: Path):
    results = analysis.load_results(drs_tsv)
    assert set(results.extra) == {"pA_l", "pA_r", "radius_paper"}
    np.testing.assert_allclose(results.radius_paper, [0.57, 0.85, 0.0, 0.28])
    np.testing.assert_allclose(results.radius, [0.40, 0.60, 0.0, 0.20])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty file"),
        ("idx\tlabel\tpredict\tradius\ttime\tcorrect\n0\t1\t1\t0.5\t1.0\t1\n", ":1: header"),
        (HEADER + "\n", "no result rows"),
        (HEADER + "\n0\t1\t1\t0.5\t1\n", ":2: expected 6"),
        (HEADER + "\n0\t1\t1\tabc\t1\t1.0\n", ":2: bad value 'abc' in column 'radius'"),
        (HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\t-0.5\t1\t1.0\n", ":3: bad value '-0.5'"),
        (HEADER + "\n0\t1\t1\t0.5\t2\t1.0\n", "correct must be 0 or 1"),
        (HEADER + "\n0\t1\t2\t0.5\t1\t1.0\n", "correct=1 but predict=2"),
        (HEADER + "\n0\t1\t1\t0.5\t1\tyesterday\n", "column 'time'"),
        (
            HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n0\t2\t2\t0.5\t1\t1.0\n",
            "idx 0 already appeared on line 2",
        ),
        (HEADER + "\tradius_paper\n0\t1\t1\t0.5\t1\t1.0\tnan\n", "column 'radius_paper'"),
    ],
)
def test_load_results_rejects_malformed_files_naming_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.tsv") as info:
        analysis.load_results(path)
    assert fragment in str(info.value)


def test_load_results_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        analysis.load_results(tmp_path / "missing.tsv")


# --------------------------------------------------------------------------- metrics


def test_certified_accuracy_and_acr_match_hand_computation(rs_tsv: Path):
    results = analysis.load_results(rs_tsv)
    accuracy = analysis.certified_accuracy(results.correct, results.radius, RADII)
    np.testing.assert_allclose(accuracy, EXPECTED_ACCURACY)
    assert analysis.average_certified_radius(results.correct, results.radius) == pytest.approx(
        EXPECTED_ACR
    )


def test_radius_ties_count_at_the_boundary_and_drop_just_above():
    correct, radius = [1, 1, 1], [0.5, 0.5, 0.25]
    below, at, above = analysis.certified_accuracy(correct, radius, [0.5 - 1e-12, 0.5, 0.5 + 1e-12])
    assert (below, at, above) == (2 / 3, 2 / 3, 0.0)
    assert analysis.certified_accuracy(correct, radius, [0.25])[0] == 1.0


def test_abstains_and_wrong_predictions_never_count_but_stay_in_the_denominator():
    # An abstain with radius 0 and a wrong prediction with a large radius.
    correct, radius = np.array([0, 0, 1, 1]), np.array([0.0, 5.0, 0.0, 1.0])
    np.testing.assert_allclose(
        analysis.certified_accuracy(correct, radius, [0.0, 1.0, 2.0]), [0.5, 0.25, 0.0]
    )
    assert analysis.average_certified_radius(correct, radius) == pytest.approx(0.25)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        analysis.certified_accuracy([1], [0.5], [-0.1])
    with pytest.raises(ValueError, match="radius must be non-negative"):
        analysis.average_certified_radius([1], [-0.5])
    with pytest.raises(ValueError, match="0 and 1"):
        analysis.average_certified_radius([3], [0.5])
    with pytest.raises(ValueError, match="one length"):
        analysis.certified_accuracy([1, 0], [0.5], [0.0])


def test_paper_radius_is_a_separate_labelled_row_never_a_replacement(drs_tsv: Path):
    results = analysis.load_results(drs_tsv)
    runs = analysis.runs_from_results(results, "DRS joint", paper_radius=True)
    assert [run.name for run in runs] == ["DRS joint", "DRS joint (paper radius, not certified)"]
    assert [run.certified for run in runs] == [True, False]
    np.testing.assert_array_equal(runs[0].radius, results.radius)
    np.testing.assert_array_equal(runs[1].radius, results.radius_paper)
    assert [run.name for run in analysis.runs_from_results(results, "DRS joint")] == ["DRS joint"]


# --------------------------------------------------------------------------- tables


def make_table(acc_rows, acr, names=None, certified=None):
    names = names or [f"run{i}" for i in range(len(acc_rows))]
    return analysis.CertifiedTable(
        names=tuple(names),
        radii=np.array([0.0, 0.25, 0.5]),
        accuracy_percent=np.array(acc_rows, dtype=float),
        acr=np.array(acr, dtype=float),
        certified=tuple(certified or [True] * len(names)),
    )


def test_markdown_layout_and_bold_best_per_column_with_ties():
    table = make_table([[80.0, 60.0, 40.0], [75.0, 60.0, 45.0]], [0.5, 0.5], ["RS", "DRS"])
    lines = analysis.to_markdown(table).splitlines()
    assert lines[0] == "| Method | 0.00 | 0.25 | 0.50 | ACR |"
    assert lines[1] == "|:---|---:|---:|---:|---:|"
    assert lines[2] == "| RS | **80.0** | **60.0** | 40.0 | **0.500** |"
    assert lines[3] == "| DRS | 75.0 | **60.0** | **45.0** | **0.500** |"
    assert len(lines) == 4


def test_bold_compares_the_shown_rounded_values():
    table = make_table([[80.04, 1.0, 1.0], [79.96, 2.0, 1.0]], [0.5004, 0.4996])
    rows = analysis.to_markdown(table).splitlines()[2:]
    assert rows[0].split(" | ")[1] == "**80.0**" and rows[1].split(" | ")[1] == "**80.0**"
    assert rows[0].endswith("**0.500** |") and rows[1].endswith("**0.500** |")


def test_uncertified_rows_are_shown_but_never_bold():
    table = make_table(
        [[50.0, 40.0, 30.0], [90.0, 80.0, 70.0]],
        [0.3, 0.9],
        ["DRS", "DRS (paper radius, not certified)"],
        [True, False],
    )
    markdown = analysis.to_markdown(table)
    assert markdown.splitlines()[2] == "| DRS | **50.0** | **40.0** | **30.0** | **0.300** |"
    assert "**" not in markdown.splitlines()[3]
    assert "not certified" in markdown.splitlines()[3]


def test_latex_escapes_names_and_bolds_best():
    table = make_table(
        [[80.0, 60.0, 40.0], [75.0, 60.0, 45.0]], [0.5, 0.6], ["RS_0.25 & 50%", "DRS #1 {x}"]
    )
    latex = analysis.to_latex(table)
    assert latex.startswith(r"\begin{tabular}{lcccc}")
    assert r"RS\_0.25 \& 50\% & \textbf{80.0} & \textbf{60.0} & 40.0 & 0.500 \\" in latex
    assert r"DRS \#1 \{x\} & 75.0 & \textbf{60.0} & \textbf{45.0} & \textbf{0.600} \\" in latex
    assert latex.rstrip().endswith(r"\end{tabular}")
    assert (
        analysis.escape_latex("a\\b~c^d$")
        == r"a\textbackslash{}b\textasciitilde{}c\textasciicircum{}d\$"
    )


def test_markdown_escapes_pipes_and_emphasis():
    table = make_table([[1.0, 1.0, 1.0]], [0.1], ["a|b *c* d_e"])
    assert analysis.to_markdown(table).splitlines()[2].startswith(r"| a\|b \*c\* d\_e | ")


def test_certified_table_from_file_matches_hand_numbers(rs_tsv: Path):
    runs = analysis.runs_from_results(analysis.load_results(rs_tsv), "RS")
    table = analysis.certified_table(runs, RADII)
    np.testing.assert_allclose(table.accuracy_percent[0], 100 * np.array(EXPECTED_ACCURACY))
    assert table.acr[0] == pytest.approx(EXPECTED_ACR)
    assert (
        "| RS | **60.0** | **50.0** | **30.0** | **20.0** | **10.0** | **0.305** |"
        in analysis.to_markdown(table)
    )


# --------------------------------------------------------------------------- plots


def assert_png(path: Path, min_width: int = 200, min_height: int = 200) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= min_width
    assert float(image[..., :3].std()) > 0.01  # something was drawn, not a blank canvas


def test_certified_accuracy_plot_is_a_valid_png(tmp_path, rs_tsv, drs_tsv):
    runs = analysis.runs_from_results(analysis.load_results(rs_tsv), "RS")
    runs += analysis.runs_from_results(analysis.load_results(drs_tsv), "DRS", paper_radius=True)
    figure = analysis.certified_accuracy_figure(runs)
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == [
        "RS",
        "DRS",
        "DRS (paper radius, not certified)",
    ]
    out = tmp_path / "acc.png"
    analysis.save_png(figure, out)
    assert_png(out)
    assert not list(tmp_path.glob(".*.tmp"))


def test_accuracy_curve_is_a_non_increasing_step_function(rs_tsv):
    results = analysis.load_results(rs_tsv)
    grid = analysis.radius_grid([analysis.Run("RS", results.correct, results.radius)])
    assert grid[0] == 0.0 and grid[-1] >= 1.2 and len(grid) > 500
    curve = analysis.certified_accuracy(results.correct, results.radius, grid)
    assert np.all(np.diff(curve) <= 0) and set(np.round(curve, 6)) <= {
        0.6,
        0.5,
        0.4,
        0.3,
        0.2,
        0.1,
        0.0,
    }


def test_bounds_plot_is_a_valid_png(tmp_path):
    out = tmp_path / "bounds.png"
    analysis.save_png(analysis.radius_bounds_figure(), out)
    assert_png(out)


# --------------------------------------------------------------------------- bound curves


def test_rs_bound_decays_like_one_over_sqrt_d():
    dims = np.array([100.0, 400.0, 3072.0, 4 * 3072.0])
    for family in analysis.BOUND_FAMILIES:
        bound = analysis.rs_radius_upper_bound(dims, 0.999, family=family)
        assert np.all(np.diff(bound) < 0)
        assert bound[1] / bound[0] == pytest.approx(0.5)
        assert bound[3] / bound[2] == pytest.approx(0.5)
        np.testing.assert_allclose(bound * np.sqrt(dims), bound[0] * 10.0)


def test_bounds_at_cifar10_dimension_match_hand_computation():
    d = 3 * 32 * 32  # 3072, sqrt(3072) = 55.42562584
    # Phi^-1(0.999) = 3.090232306; sqrt(0.999 / 0.001) = sqrt(999) = 31.60696126
    assert analysis.rs_radius_upper_bound(d, 0.999) == pytest.approx(
        3.090232306 / 55.42562584, rel=1e-8
    )
    assert analysis.rs_radius_upper_bound(d, 0.999, family="symmetric") == pytest.approx(
        31.60696126 / 55.42562584, rel=1e-8
    )
    # DRS, m = n = 1536: (2 * 3.090232306 / sqrt(1536)) / sqrt(2) = 0.1115102...
    assert analysis.drs_radius_upper_bound(d, 0.999) == pytest.approx(
        2 * 3.090232306 / math.sqrt(1536) / math.sqrt(2), rel=1e-8
    )
    assert analysis.drs_radius_upper_bound(d, 0.999) == pytest.approx(0.111510, abs=1e-6)
    # sigma = noise_norm / sqrt(d) enters linearly.
    assert analysis.rs_radius_upper_bound(d, 0.999, noise_norm=0.5) == pytest.approx(
        0.5 * analysis.rs_radius_upper_bound(d, 0.999)
    )


def test_drs_bound_above_rs_at_equal_dimension_and_scales_with_the_split():
    dims = np.geomspace(16, 1e6, 50)
    for family in analysis.BOUND_FAMILIES:
        rs = analysis.rs_radius_upper_bound(dims, 0.999, family=family)
        drs = analysis.drs_radius_upper_bound(dims, 0.999, family=family)
        assert np.all(drs > rs)
        np.testing.assert_allclose(drs / rs, 2.0)  # m = n = d/2
    # General split: proportional to 1/sqrt(m) + 1/sqrt(n).
    d, m = 3072.0, 1024.0
    ratio = analysis.drs_radius_upper_bound(d, 0.99, m=m) / analysis.rs_radius_upper_bound(
        1.0, 0.99
    )
    assert ratio == pytest.approx((1 / math.sqrt(m) + 1 / math.sqrt(d - m)) / math.sqrt(2))


def test_family_wide_bound_dominates_the_exact_gaussian_radius():
    # The Gaussian is one of the symmetric laws, so its exact radius must lie below.
    p = np.linspace(0.5001, 0.999999, 200)
    gaussian = analysis.rs_radius_upper_bound(100, p, family="gaussian")
    symmetric = analysis.rs_radius_upper_bound(100, p, family="symmetric")
    assert np.all(gaussian < symmetric)


def test_bounds_reject_bad_parameters():
    with pytest.raises(ValueError, match="p_a"):
        analysis.rs_radius_upper_bound(100, 0.5)
    with pytest.raises(ValueError, match="d must be positive"):
        analysis.rs_radius_upper_bound(0, 0.9)
    with pytest.raises(ValueError, match="0 < m < d"):
        analysis.drs_radius_upper_bound(100, 0.9, m=100)
    with pytest.raises(ValueError, match="family"):
        analysis.rs_radius_upper_bound(100, 0.9, family="laplace")


# --------------------------------------------------------------------------- the script


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_script_writes_table_and_plots(tmp_path, rs_tsv, drs_tsv):
    out = tmp_path / "out"
    bounds = tmp_path / "fig" / "bounds.png"
    result = run_script(
        str(rs_tsv),
        str(drs_tsv),
        "--names",
        "RS",
        "DRS joint",
        "--radii",
        "0",
        "0.25",
        "0.5",
        "--paper-radius",
        "--out",
        str(out),
        "--bounds-plot",
        str(bounds),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    stdout = result.stdout.splitlines()
    assert stdout[0] == "| Method | 0.00 | 0.25 | 0.50 | ACR |"
    assert stdout[2] == "| RS | **60.0** | **50.0** | **30.0** | **0.305** |"
    assert stdout[3] == "| DRS joint | 50.0 | **50.0** | 25.0 | 0.250 |"
    # The paper radius beats both at 0.50 and in ACR, but is not certified: never bold.
    assert stdout[4] == "| DRS joint (paper radius, not certified) | 50.0 | 50.0 | 50.0 | 0.355 |"
    assert (out / "table.md").read_text() == result.stdout
    assert r"\textbf{60.0}" in (out / "table.tex").read_text()
    assert_png(out / "certified_accuracy.png")
    assert_png(bounds)


def assert_clean_failure(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze.py: error:"), result.stderr
    assert fragment in lines[0]
    assert result.stdout == ""


def test_script_missing_file_exits_2_without_outputs(tmp_path, rs_tsv):
    out = tmp_path / "out"
    result = run_script(str(rs_tsv), str(tmp_path / "nope.tsv"), "--out", str(out), cwd=tmp_path)
    assert_clean_failure(result, "nope.tsv")
    assert not out.exists()


def test_script_malformed_tsv_exits_2_without_outputs(tmp_path, rs_tsv):
    bad = tmp_path / "bad.tsv"
    bad.write_text(HEADER + "\n0\t1\t1\t0.5\t1\t1.0\n1\t2\t2\tx\t1\t1.0\n")
    out = tmp_path / "out"
    result = run_script(
        str(rs_tsv),
        str(bad),
        "--out",
        str(out),
        "--bounds-plot",
        str(tmp_path / "b.png"),
        cwd=tmp_path,
    )
    assert_clean_failure(result, "bad.tsv:3")
    assert not out.exists() and not (tmp_path / "b.png").exists()


def load_script():
    return load_module(SCRIPT, "analyze_script")


def run_main(argv: list[str]) -> int:
    """The exit status of the script's ``main(argv)`` run in-process as the script runs it."""
    main = load_script().main
    with pytest.raises(SystemExit) as exit_:
        cli.run_script(lambda: main(argv), str(SCRIPT))
    return exit_.value.code


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--names", "only-one-name-for-two"], "--names has 1 entries for 2"),
        (["--radii", "0", "-0.5"], "non-negative"),
        (["--radii", "zero"], "invalid float value"),
        (["--max-radius", "-1"], "max_radius must be positive"),
    ],
)
def test_script_bad_arguments_exit_2(tmp_path, capsys, rs_tsv, drs_tsv, args, fragment):
    # In-process (the subprocess tests above already cover tracebacks).
    argv = [str(rs_tsv), str(drs_tsv), *args, "--out", str(tmp_path / "out")]
    code = run_main(argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("analyze.py: error:") and fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_script_needs_an_input(capsys):
    assert run_main([]) == 2
    assert "at least one TSV" in capsys.readouterr().err


def test_every_keeps_the_multiples_with_all_their_columns(tmp_path, rs_tsv, drs_tsv):
    every3 = analysis.load_results(rs_tsv).every(3)
    assert every3.idx.tolist() == [0, 3, 6, 9]
    assert every3.radius.tolist() == [0.10, 0.50, 0.90, 0.00]
    assert every3.correct.tolist() == [1, 1, 0, 0]
    every2 = analysis.load_results(drs_tsv).every(2)
    assert every2.idx.tolist() == [0, 2] and every2.radius_paper.tolist() == [0.57, 0.0]
    with pytest.raises(ValueError, match="multiple of 2"):
        analysis.load_results(write_tsv(tmp_path / "one.tsv", ROWS[1:2])).every(2)
    with pytest.raises(ValueError, match="positive"):
        analysis.load_results(rs_tsv).every(0)


def test_script_every_tabulates_the_subset(tmp_path, rs_tsv):
    result = run_script(str(rs_tsv), "--every", "3", "--names", "RS", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # idx 0, 3, 6, 9: correct with radii 0.10 and 0.50 -> 50% at 0, 25% at 0.25 and 0.50.
    assert result.stdout.splitlines()[2].startswith(
        "| RS | **50.0** | **25.0** | **25.0** | **0.0** |")


def test_restricted_to_keeps_the_named_images_with_all_their_columns(tmp_path, drs_tsv):
    kept = analysis.load_results(drs_tsv).restricted_to(np.array([2, 0, 99]))
    assert kept.idx.tolist() == [0, 2] and kept.radius_paper.tolist() == [0.57, 0.0]
    with pytest.raises(ValueError, match="none of its images"):
        analysis.load_results(drs_tsv).restricted_to(np.array([99]))


def test_script_common_images_compares_an_unfinished_run_on_its_images(tmp_path, rs_tsv):
    # An unfinished run: the first 4 images only (radii 0.10, 0.25, 0.25, 0.50, all correct).
    part = write_tsv(tmp_path / "run.tsv.part0", ROWS[:4])
    args = [str(rs_tsv), str(part), "--names", "RS", "partial", "--out", "out"]
    result = run_script(*args, "--common-images", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Both rows over the same 4 images: 100% at 0, 75% at 0.25, 25% at 0.5.
    rows = result.stdout.splitlines()[2:4]
    assert rows[0].startswith("| RS | **100.0** | **75.0** | **25.0** | **0.0** |")
    assert rows[1].startswith("| partial | **100.0** | **75.0** | **25.0** | **0.0** |")
    # Without the option, RS keeps its 10 images (60% at 0); the tables are replaced.
    result = run_script(*args, "--overwrite", cwd=tmp_path)
    assert result.stdout.splitlines()[2].startswith("| RS | 60.0 |")


def test_script_common_images_refuses_disjoint_files(tmp_path, capsys):
    first = write_tsv(tmp_path / "a.tsv", ROWS[:3])
    second = write_tsv(tmp_path / "b.tsv", ROWS[5:])
    code = run_main([str(first), str(second), "--common-images", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "no image is in every file" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_load_run_joins_an_unfinished_runs_files_in_idx_order(tmp_path, rs_tsv):
    # Two processes (ranks take alternate images) extending an earlier run in OUT.
    out = write_tsv(tmp_path / "run.tsv", ROWS[:2])
    write_tsv(tmp_path / "run.tsv.part1", [ROWS[3], ROWS[5], ROWS[7]])
    write_tsv(tmp_path / "run.tsv.part0", [ROWS[2], ROWS[4], ROWS[6]])
    joined = analysis.load_run(out)
    assert joined.idx.tolist() == list(range(8))
    reference = analysis.load_results(rs_tsv)
    for name in ("label", "predict", "radius", "correct", "time"):
        assert getattr(joined, name).tolist() == getattr(reference, name)[:8].tolist()
    # Only parts (OUT not written yet); a finished file alone reads as itself.
    out.unlink()
    assert analysis.load_run(out).idx.tolist() == [2, 3, 4, 5, 6, 7]
    assert analysis.load_run(rs_tsv).idx.tolist() == list(range(10))
    with pytest.raises(FileNotFoundError):
        analysis.load_run(tmp_path / "never.tsv")


def test_load_run_refuses_conflicting_rows_and_mixed_columns(tmp_path):
    write_tsv(tmp_path / "a.tsv.part0", ROWS[:3])
    write_tsv(tmp_path / "a.tsv.part1", [ROWS[2][:3] + (0.5,) + ROWS[2][4:], ROWS[3]])
    with pytest.raises(ValueError, match="image 2 has different rows in .*part0 and .*part1"):
        analysis.load_run(tmp_path / "a.tsv")
    write_tsv(tmp_path / "b.tsv.part0", ROWS[:2], HEADER + "\tn_used", extra=[[9], [9]])
    write_tsv(tmp_path / "b.tsv.part1", ROWS[2:4])
    with pytest.raises(ValueError, match="b.tsv.part1 has other columns than .*b.tsv.part0"):
        analysis.load_run(tmp_path / "b.tsv")


def test_load_run_reads_a_run_as_resuming_would(tmp_path):
    out = tmp_path / "run.tsv"
    # Just merged: OUT holds every row, a part not yet deleted repeats some.
    write_tsv(out, ROWS[:4])
    write_tsv(tmp_path / "run.tsv.part0", ROWS[1:3])
    assert analysis.load_run(out).idx.tolist() == [0, 1, 2, 3]
    out.unlink()
    # A process still on its first image (header only), and a row being written.
    (tmp_path / "run.tsv.part1").write_text(HEADER + "\n")
    with open(tmp_path / "run.tsv.part0", "a") as handle:
        handle.write("4\t5\t5\t0.7")
    assert analysis.load_run(out).idx.tolist() == [1, 2]
    # A column numeric in one part and text in the other keeps its text.
    write_tsv(tmp_path / "c.tsv.part0", ROWS[:1], HEADER + "\tnote", extra=[[7138]])
    write_tsv(tmp_path / "c.tsv.part1", ROWS[1:2], HEADER + "\tnote", extra=[["x"]])
    assert analysis.load_run(tmp_path / "c.tsv").extra["note"].tolist() == ["7138", "x"]
    (tmp_path / "d.tsv.part0").write_text(HEADER + "\n")
    with pytest.raises(ValueError, match="no result rows yet"):
        analysis.load_run(tmp_path / "d.tsv")


def test_script_reads_an_unfinished_multi_process_run(tmp_path, rs_tsv):
    write_tsv(tmp_path / "run.tsv.part0", ROWS[0:4:2])
    write_tsv(tmp_path / "run.tsv.part1", ROWS[1:4:2])
    args = [str(rs_tsv), "run.tsv", "--names", "RS", "partial", "--out", "out"]
    result = run_script(*args, "--common-images", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "run.tsv: unfinished run, 4 rows so far from 2 files" in result.stderr
    rows = result.stdout.splitlines()[2:4]
    assert rows[0].startswith("| RS | **100.0** | **75.0** | **25.0** | **0.0** |")
    assert rows[1].startswith("| partial | **100.0** | **75.0** | **25.0** | **0.0** |")
