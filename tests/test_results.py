import ast
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from denoised_drs import results
from denoised_drs.analysis import load_results
from denoised_drs.modes import CertificateKind
from denoised_drs.results import (
    BASE_COLUMNS,
    N_USED_COLUMN,
    CertifyRecord,
    PartWriter,
    columns_for,
    existing_parts,
    floor_decimals,
    format_row,
    merge,
    part_path,
)
from denoised_drs.scheme import detail_columns, rule_for


def test_a_product_that_rounds_up_is_still_floored():
    # 0.034895999999999996 * 1e6 rounds to 34896.0 in floating point, which
    # math.floor would have printed as 0.034896, above the radius.
    assert floor_decimals(0.034895999999999996) == "0.034895"
    assert floor_decimals(0.0) == "0.000000"
    assert floor_decimals(0.5, 2) == "0.50"


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
def test_printed_radius_is_a_lower_bound_within_one_unit(value):
    printed = Decimal(floor_decimals(value))
    assert printed <= Decimal(value) < printed + Decimal("0.000001")
    assert float(printed) <= value


def test_parts_are_found_by_exact_name_not_as_a_pattern(tmp_path):
    header = ("idx", "label")
    for name in ("r[1].tsv", "a*.tsv", "ab.tsv", "r1.tsv"):
        for rank in (0, 1):
            writer = PartWriter(part_path(tmp_path / name, rank), header)
            writer.write(f"{rank}\t{len(name)}")
            writer.close()
    (tmp_path / "a*.tsv.part1.bak").write_text("junk\n")
    (tmp_path / "a*.tsv.parted").write_text("junk\n")
    assert existing_parts(tmp_path / "a*.tsv") == [tmp_path / "a*.tsv.part0",
                                                   tmp_path / "a*.tsv.part1"]
    assert existing_parts(tmp_path / "r[1].tsv") == [tmp_path / "r[1].tsv.part0",
                                                     tmp_path / "r[1].tsv.part1"]
    assert merge(tmp_path / "r[1].tsv", header) == 2
    assert merge(tmp_path / "a*.tsv", header) == 2
    assert (tmp_path / "a*.tsv").read_text() == "idx\tlabel\n0\t6\n1\t6\n"
    # Other runs' parts are untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a*.tsv", "a*.tsv.part1.bak", "a*.tsv.parted", "ab.tsv.part0", "ab.tsv.part1",
        "r1.tsv.part0", "r1.tsv.part1", "r[1].tsv"]
    assert existing_parts(tmp_path / "missing" / "x.tsv") == []


@pytest.mark.parametrize("kind, branches", [(kind, 1 if kind is CertificateKind.RS else 2)
                                             for kind in CertificateKind]
                         + [(CertificateKind.INDEPENDENT, 4), (CertificateKind.COUPLED, 3)])
def test_the_reader_reads_every_column_the_writer_writes(tmp_path, kind, branches):
    details = detail_columns(branches, rule_for(kind).reports_paper_radius(branches))
    records = [
        CertifyRecord(idx=i, label=1, predict=predict, radius=0.1234567 * (predict != -1),
                      correct=int(predict == 1), time=0.5, p_lower=(0.875,) * branches,
                      counts_top=(7,) * branches,
                      radius_paper=0.25 if "radius_paper" in details else None,
                      nonfinite=i, n_used=40)
        for i, predict in enumerate((1, -1, 2))
    ]
    out = tmp_path / "r.tsv"
    header = columns_for(details)
    out.write_text("\n".join(["\t".join(header), *(format_row(r, details) for r in records)])
                   + "\n")
    loaded = load_results(out)
    assert list(loaded.predict) == [1, -1, 2] and list(loaded.correct) == [1, 0, 0]
    assert list(loaded.radius) == [0.123456, 0.0, 0.123456]  # floored, never rounded up
    assert set(loaded.extra) == set(header[len(BASE_COLUMNS):])
    assert list(loaded.extra[N_USED_COLUMN]) == [40, 40, 40]
    assert list(loaded.extra["nonfinite"]) == [0, 1, 2]
    if "radius_paper" in details:
        assert list(loaded.radius_paper) == [0.25] * 3
    else:
        assert loaded.radius_paper is None


def test_the_record_has_one_home():
    # results.py holds the schema and must not need the pipeline (and its models).
    import denoised_drs
    from denoised_drs import pipeline

    tree = ast.parse(Path(results.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "denoised_drs.pipeline" not in imported
    assert pipeline.CertifyRecord is denoised_drs.CertifyRecord is CertifyRecord
