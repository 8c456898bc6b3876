from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from denoised_drs.results import floor_decimals


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
