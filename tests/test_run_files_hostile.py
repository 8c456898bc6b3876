"""Result and part files under hostile or damaged input (issue 23, items 1, 3, 7, 9, 13).

A run's files are trusted only when they are provably its own: target radii read back
exactly, no torn or malformed row is taken as a result, another run's file is never
merged or deleted, a refused resume changes nothing, and every session is logged.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from denoised_drs import results
from denoised_drs.data import load_sample
from denoised_drs.pipeline import Pipeline
from denoised_drs.results import CertifyRecord, columns_for, format_row
from denoised_drs.runner import certify_dataset, config_path, run_identity

FAST = {"mode": "rs", "sigma": 0.25, "n0": 10, "n": 40, "batch": 25, "device": "cpu"}


@pytest.fixture(scope="module")
def data():
    return load_sample()


def rs_pipe(checkpoints, **overrides) -> Pipeline:
    return Pipeline(classifier=checkpoints["full"], **{**FAST, **overrides})


def rows_of(path: Path) -> list[list[str]]:
    """The rows of a result file without the time column (which varies run to run)."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, name in enumerate(header) if name != "time"]
    return [[line.split("\t")[i] for i in keep] for line in lines[1:]]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file of ``folder`` with its bytes, inode and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


# -- item 1: target radii are settings, written so that they read back exactly ------

def test_a_target_radius_is_written_exactly_and_a_computed_one_floored():
    details = ("pA", "count")
    record = CertifyRecord(idx=0, label=1, predict=1, radius=0.3, correct=1, time=0.5,
                           p_lower=(0.9,), counts_top=(40,), n_used=40)
    assert format_row(record, details, targets=(0.3, 0.6)).split("\t")[3] == "0.3"
    # A computed radius equal to no target stays floored (a bound, never above it).
    assert format_row(record, details, targets=(0.6,)).split("\t")[3] == "0.299999"
    assert format_row(record, details).split("\t")[3] == "0.299999"


def test_a_run_with_target_radii_records_exactly_the_targets(tiny_checkpoints, data, tmp_path):
    pipe = rs_pipe(tiny_checkpoints, sigma=0.5, n=400, batch=200, adaptive=True,
                   radii=[0.3, 0.6])
    out = tmp_path / "radii.tsv"
    certify_dataset(pipe, data, list(range(6)), out, progress=False)
    radii = [float(row[3]) for row in rows_of(out)]
    assert set(radii) <= {0.0, 0.3, 0.6}
    assert {0.3, 0.6} & set(radii), "the tiny model certified no target: the test proves nothing"


# -- item 3: a torn or malformed row is never a result -----------------------------

def test_an_unterminated_last_row_is_recomputed(tiny_checkpoints, data, tmp_path):
    reference = tmp_path / "ref.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1, 2], reference, progress=False)
    out = tmp_path / "r.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1], out, progress=False)
    row = reference.read_text().splitlines()[3]
    assert row.startswith("2\t")
    torn = row[:-1]  # n_used "40" cut to "4"
    part = results.part_path(out, 0)
    part.write_text("\t".join(columns_for(("pA", "count"))) + "\n" + torn)
    from denoised_drs.runner import run_identity

    results.write_identity(part, run_identity(json.loads(config_path(out).read_text())))
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1, 2], out, progress=False)
    assert rows_of(out) == rows_of(reference)
    assert not part.exists()


@pytest.mark.parametrize("cell, value", [("n_used", "4x0"), ("radius", "nan"),
                                         ("label", "-3"), ("correct", "2"), ("pA", "1.5"),
                                         ("time", ""), ("count", "9" * 5000),
                                         ("idx", "2" * 5000)])
def test_a_malformed_terminated_row_is_refused_naming_file_and_line(
        tiny_checkpoints, data, tmp_path, cell, value):
    out = tmp_path / "r.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1], out, progress=False)
    header = out.read_text().splitlines()[0].split("\t")
    lines = out.read_text().splitlines()
    cells = lines[2].split("\t")
    cells[header.index(cell)] = value
    lines[2] = "\t".join(cells)
    out.write_text("\n".join(lines) + "\n")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"^{out} line 3 is not a result row") as error:
        certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1, 2], out, progress=False)
    assert "\n" not in str(error.value)
    assert snapshot(tmp_path) == before


# -- item 7: another run's file named like a part file -----------------------------

def test_another_runs_result_named_like_a_part_is_neither_merged_nor_deleted(
        tiny_checkpoints, data, tmp_path):
    out = tmp_path / "x.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1], out, progress=False)
    # Another run, at another sigma, whose result happens to be named x.tsv.part0.
    other = tmp_path / "x.tsv.part0"
    certify_dataset(rs_pipe(tiny_checkpoints, sigma=0.5), data, [2, 3], other, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="x.tsv.part0 is not a part file of this run"):
        certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1, 2, 3], out, progress=False)
    assert snapshot(tmp_path) == before


def interrupted(dataset, after: int):
    """``dataset`` that fails on its ``after``-th access, like a run killed mid-way."""
    calls = []

    class Interrupted(list):
        def __getitem__(self, idx):
            calls.append(idx)
            if len(calls) == after:
                raise KeyboardInterrupt
            return dataset[idx]

    return Interrupted(dataset[i] for i in range(len(dataset)))


def test_a_part_file_carries_the_runs_identity(tiny_checkpoints, data, tmp_path):
    out = tmp_path / "r.tsv"
    small = [data[i] for i in range(8)]
    # The config check reads every selected image once; the run then reads each to certify.
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(rs_pipe(tiny_checkpoints), interrupted(small, 4 + 3), [0, 1, 2, 3],
                        out, progress=False)
    part, identity = results.part_path(out, 0), results.identity_path(results.part_path(out, 0))
    assert len(part.read_text().splitlines()) == 3 and identity.is_file()
    # The same run resumes from its own part file ...
    saved = identity.read_text()
    identity.write_text(saved.replace(saved.split()[-1], "0" * 64))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="r.tsv.part0 belongs to another run"):
        certify_dataset(rs_pipe(tiny_checkpoints), small, [0, 1, 2, 3], out, progress=False)
    assert snapshot(tmp_path) == before
    identity.write_text(saved)
    certify_dataset(rs_pipe(tiny_checkpoints, batch=20), small, [0, 1, 2, 3], out,
                    progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.tsv", "r.tsv.config.json"]
    reference = tmp_path / "ref" / "r.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), small, [0, 1, 2, 3], reference, progress=False)
    assert rows_of(out) == rows_of(reference)


# -- item 9: a refused resume changes nothing ----------------------------------------

def _damage_header(out: Path) -> None:
    text = out.read_text()
    out.write_text("idx\tlabel\tpredict\n" + text.split("\n", 1)[1])


def _junk_row(out: Path) -> None:
    out.write_text(out.read_text() + "junk\n")


def _binary(out: Path) -> None:
    out.write_bytes(b"\x80\x81\x00\xff" * 64)


def _foreign_part(out: Path) -> None:
    # A two-branch run's part file, marked with this run's identity so that what is
    # refused is its content, not a missing identity file.
    header = columns_for(("pA_l", "pA_r", "count_l", "count_r"))
    part = results.part_path(out, 0)
    part.write_text("\t".join(header) + "\n")
    results.write_identity(part, run_identity(json.loads(config_path(out).read_text())))


@pytest.mark.parametrize(("damage", "reason"), [
    (_damage_header, "r.tsv has another header than this run writes"),
    (_junk_row, "r.tsv line 4 is not a result row of this run (1 fields"),
    (_binary, "r.tsv is not a text result file (it is not UTF-8)"),
    (_foreign_part, "r.tsv.part0 has another header than this run writes"),
])
def test_a_refused_resume_changes_nothing(tiny_checkpoints, data, tmp_path, damage, reason):
    out = tmp_path / "r.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1], out, progress=False)
    damage(out)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=re.escape(reason)) as error:
        # A changed batch: the configuration would be rewritten if the resume went on.
        certify_dataset(rs_pipe(tiny_checkpoints, batch=20), data, [0, 1, 2], out,
                        progress=False)
    assert "\n" not in str(error.value) and str(out) in str(error.value)
    assert snapshot(tmp_path) == before


# -- item 13: a log of every session -------------------------------------------------

def test_each_session_is_logged_with_its_settings_and_rows(tiny_checkpoints, data, tmp_path):
    out = tmp_path / "r.tsv"
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1], out, progress=False)
    certify_dataset(rs_pipe(tiny_checkpoints, batch=20), data, [0, 1, 2, 3, 4], out,
                    progress=False)
    certify_dataset(rs_pipe(tiny_checkpoints, batch="auto"), data, [0, 1, 2, 3, 4, 5], out,
                    progress=False)
    sessions = json.loads(config_path(out).read_text())["sessions"]
    assert [s["rows"] for s in sessions] == [2, 3, 1]
    assert [s["settings"]["batch"] for s in sessions] == [25, 20, "auto"]
    # The batch used, and for "auto" how it was chosen (on a CPU: the CPU default, capped).
    assert [s["numeric"]["batch"] for s in sessions] == [25, 20, 40]
    assert [s["numeric"]["batch_choice"] for s in sessions] == [
        None, None, "batch 40: the CPU default 1000, at most max(N0, N) = 40"]
    assert [s["numeric"]["compile_mode"] for s in sessions] == [None] * 3
    for session in sessions:
        assert session["torch"] == torch.__version__
        assert session["cuda"] == torch.version.cuda
        assert session["device_name"]
        assert session["start"].endswith("+00:00")
        assert set(session["settings"]) == {"batch", "compile", "compile_mode", "denoiser_chunk",
                                            "device"}
        assert "winograd" in session["numeric"] and "autocast" in session["numeric"]
        assert session["numeric"]["autocast_scope"] == "step"
    # The log never blocks a resume, and a resume with nothing to do still logs itself.
    certify_dataset(rs_pipe(tiny_checkpoints), data, [0, 1, 2, 3, 4, 5], out, progress=False)
    sessions = json.loads(config_path(out).read_text())["sessions"]
    assert [s["rows"] for s in sessions] == [2, 3, 1, 0]
    assert os.path.isfile(out)


def test_a_session_records_the_winograd_choice_of_a_cpu_denoiser(tiny_checkpoints):
    from denoised_drs.diffusion.winograd import winograd_pays
    from denoised_drs.runner import session_entry

    plain = session_entry(rs_pipe(tiny_checkpoints), 1)["numeric"]
    assert plain["winograd"] is None  # no denoiser: no Winograd layer to choose for
    denoised = session_entry(rs_pipe(tiny_checkpoints, denoiser=tiny_checkpoints["denoiser"]), 2)
    assert denoised["numeric"]["winograd"] is winograd_pays()
    assert denoised["processes"] == 2 and denoised["rows"] is None


def test_a_part_without_identity_is_taken_only_from_an_older_versions_run(
        tiny_checkpoints, data, tmp_path):
    out = tmp_path / "r.tsv"
    small = [data[i] for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(rs_pipe(tiny_checkpoints), interrupted(small, 4 + 3), [0, 1, 2, 3],
                        out, progress=False)
    part = results.part_path(out, 0)
    results.identity_path(part).unlink()
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"r.tsv.part0 is not a part file of this run \(it "
                       "has no identity file r.tsv.part0.id\\)"):
        certify_dataset(rs_pipe(tiny_checkpoints), small, [0, 1, 2, 3], out, progress=False)
    assert snapshot(tmp_path) == before
    # As an older version left it: a configuration without a session log.
    saved = json.loads(config_path(out).read_text())
    del saved["sessions"]
    config_path(out).write_text(json.dumps(saved))
    certify_dataset(rs_pipe(tiny_checkpoints), small, [0, 1, 2, 3], out, progress=False)
    assert [row[0] for row in rows_of(out)] == ["0", "1", "2", "3"]
    sessions = json.loads(config_path(out).read_text())["sessions"]
    assert [s["rows"] for s in sessions] == [2]
