"""``--start``: completing an every-20th run into an every-10th one gives the same rows."""

from __future__ import annotations

import pytest

from denoised_drs.runner import select_indices


def test_start_selects_the_images_an_every_skip_run_left_out():
    evens = select_indices(100, 20)
    odds = select_indices(100, 20, start=10)
    assert odds == [10, 30, 50, 70, 90]
    assert sorted(evens + odds) == select_indices(100, 10)
    assert select_indices(100, 20, 45, start=10) == [10, 30]


@pytest.mark.parametrize("start", [-1, 1.5, True, 100])
def test_a_start_that_selects_nothing_or_is_no_index_is_refused(start):
    with pytest.raises(ValueError, match="start"):
        select_indices(100, 20, start=start)
