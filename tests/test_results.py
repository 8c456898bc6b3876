from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from denoised_drs.results import PartWriter, existing_parts, floor_decimals, merge, part_path


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
    assert existing_parts(tmp_path / "a*.tsv") == [tmp_path / "a*.tsv.part0", tmp_path / "a*.tsv.part1"]
    assert existing_parts(tmp_path / "r[1].tsv") == [tmp_path / "r[1].tsv.part0", tmp_path / "r[1].tsv.part1"]
    assert merge(tmp_path / "r[1].tsv", header) == 2
    assert merge(tmp_path / "a*.tsv", header) == 2
    assert (tmp_path / "a*.tsv").read_text() == "idx\tlabel\n0\t6\n1\t6\n"
    # Other runs' parts are untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a*.tsv", "a*.tsv.part1.bak", "a*.tsv.parted", "ab.tsv.part0", "ab.tsv.part1",
        "r1.tsv.part0", "r1.tsv.part1", "r[1].tsv"]
    assert existing_parts(tmp_path / "missing" / "x.tsv") == []
