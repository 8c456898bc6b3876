"""``--sigma S --sigma-r R`` is two-branch DRS with a sigma per branch (the CLI always
passes --sigma as a list): it was refused for every R."""

from __future__ import annotations

import pytest

from denoised_drs.pipeline_config import PipelineConfig

DRS = {"mode": "drs", "classifier_l": "l.pt", "classifier_r": "r.pt"}


def test_one_sigma_in_a_list_beside_sigma_r_is_a_sigma_per_branch():
    config = PipelineConfig(**DRS, sigma=[0.25], sigma_r=0.5)
    assert (config.sigma, config.sigma_r, config.part_sigmas()) == (0.25, 0.5, (0.25, 0.5))
    assert config.to_dict() == PipelineConfig(**DRS, sigma=0.25, sigma_r=0.5).to_dict()


def test_two_sigmas_and_sigma_r_stay_refused():
    with pytest.raises(ValueError, match="give sigma_r or a list of sigmas, not both"):
        PipelineConfig(**DRS, sigma=[0.25, 0.5], sigma_r=0.5)
