"""The Figure 1(b)-style curve for k parts: k = 1 and 2 are the RS and DRS curves."""

import numpy as np
import pytest
from module_files import load_module

from denoised_drs.analysis import (
    drs_radius_upper_bound,
    kway_radius_upper_bound,
    radius_bounds_figure,
    rs_radius_upper_bound,
)

DIMS = np.array([784.0, 3072.0, 150528.0])


def test_one_and_two_parts_are_the_rs_and_drs_curves_and_k_parts_stay_below_k_times_rs():
    assert np.allclose(kway_radius_upper_bound(DIMS, 1), rs_radius_upper_bound(DIMS))
    assert np.allclose(kway_radius_upper_bound(DIMS, 2), drs_radius_upper_bound(DIMS))
    four = kway_radius_upper_bound(DIMS, 4)
    ratio = four / rs_radius_upper_bound(DIMS)
    assert np.allclose(ratio, ratio[0]) and 3.5 < ratio[0] <= 4.0  # the saddle value is 4
    with pytest.raises(ValueError, match="k must be a positive integer"):
        kway_radius_upper_bound(DIMS, 0)


def test_the_figure_and_the_script_draw_one_curve_per_k(tmp_path):
    figure = radius_bounds_figure(dims=DIMS, parts=(1, 2, 4))
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert [label for label in labels if "parts" in label] == [
        "$k = 1$ parts of $d/1$", "$k = 2$ parts of $d/2$", "$k = 4$ parts of $d/4$"]
    with pytest.raises(ValueError, match="Gaussian"):
        radius_bounds_figure(dims=DIMS, family="symmetric", parts=(1, 4))
    script = load_module(
        __import__("pathlib").Path(__file__).resolve().parents[1] / "scripts" / "analyze.py",
        "analyze_kway")
    out = tmp_path / "bounds.png"
    script.main(["--bounds-plot", str(out), "--bound-parts", "1", "2", "4"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
