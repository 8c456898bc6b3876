"""Split denoising with one sigma per branch; joint denoising refuses it with its reason."""

import pytest
import torch
from torch import nn

from denoised_drs.partition import Checkerboard
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig
from denoised_drs.voters import SplitDenoisedBranches

FAST = {"n0": 10, "n": 40, "batch": 25, "device": "cpu"}


class Recording(nn.Module):
    """An identity 'denoiser' that keeps what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return x


class FirstPixel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], dim=1)


def test_each_branch_fills_and_denoises_at_its_own_sigma():
    denoiser_l, denoiser_r = Recording(), Recording()
    voter = SplitDenoisedBranches([denoiser_l, denoiser_r], FirstPixel(), FirstPixel(),
                                  sigma=(0.2, 0.7))
    zeros = torch.zeros(64, 1, 8, 4)
    fresh = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    voter([zeros, zeros], fresh)
    (seen_l,), (seen_r,) = denoiser_l.seen, denoiser_r.seen
    board = Checkerboard()
    # With zero sub-images the filled pixels are sigma_j sqrt(1 - 1/k) times the fresh
    # noise: the other half of each branch's image carries that branch's own level.
    missing_l = board.split(seen_l)[1] / board.split(fresh)[1]
    missing_r = board.split(seen_r)[0] / board.split(fresh)[0]
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(missing_l[interior], torch.tensor(0.2 * 0.75**0.5))
    assert torch.allclose(missing_r[interior], torch.tensor(0.7 * 0.75**0.5))


def test_the_pipeline_denoises_each_branch_at_its_own_timestep(tiny_checkpoints):
    common = {"mode": "drs", "classifier_l": tiny_checkpoints["l"],
              "classifier_r": tiny_checkpoints["r"], "denoiser": tiny_checkpoints["denoiser"],
              "denoise": "split", **FAST}
    pipe = Pipeline(**common, sigma=0.18, sigma_r=0.5)
    denoiser_l, denoiser_r = pipe.smoothed.voter.denoisers
    assert (denoiser_l.sigma, denoiser_r.sigma) == (0.18, 0.5)
    assert denoiser_l.timestep < denoiser_r.timestep
    assert denoiser_l.network is denoiser_r.network  # one network, two noise levels
    assert pipe.smoothed.sigmas == (0.18, 0.5)
    same = Pipeline(**common, sigma=0.18)
    assert same.smoothed.voter.denoisers[0] is same.smoothed.voter.denoisers[1]
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    record = pipe.certify_one(image, 0, 0)
    assert len(record.p_lower) == 2


def test_joint_denoising_refuses_two_sigmas_and_says_why(tiny_checkpoints):
    with pytest.raises(ValueError, match="joint denoising needs one sigma.*denoise split"):
        PipelineConfig(mode="drs", classifier_l=tiny_checkpoints["l"],
                       classifier_r=tiny_checkpoints["r"], denoiser=tiny_checkpoints["denoiser"],
                       denoise="joint", sigma=0.18, sigma_r=0.5, **FAST)
