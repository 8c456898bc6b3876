"""Denoised voters: one denoiser call per sample in joint mode, branch isolation in split mode."""

import pytest
import torch
from torch import nn

from denoised_drs.modes import CertificateKind
from denoised_drs.partition import Checkerboard
from denoised_drs.smoothing import Smooth, SmoothedClassifier
from denoised_drs.voters import (
    NONFINITE_VOTE,
    BranchClassifiers,
    DenoisedClassifier,
    JointDenoisedBranches,
    SplitDenoisedBranches,
)


class CountingDenoiser(nn.Module):
    """A fixed random 3x3 convolution that mixes neighbouring pixels, like a real denoiser."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))
        self.calls = 0
        self.images = 0

    def forward(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return self.conv(x).clamp(0, 1)


class Recorder(nn.Module):
    """A 10-class linear classifier that remembers its last input."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.linear = nn.Linear(32, 10)
        nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(seed))
        self.last_input = None

    def forward(self, x):
        self.last_input = x.clone()
        return self.linear(x.flatten(1))


def test_joint_mode_makes_one_denoiser_call_per_sample_for_both_branches():
    denoiser = CountingDenoiser()
    voter = JointDenoisedBranches(denoiser, Recorder(1), Recorder(2))
    smoothed = SmoothedClassifier(voter, Checkerboard(), 10, (0.25, 0.25))
    assert smoothed.kind is CertificateKind.COUPLED
    cert = smoothed.certify(torch.rand(1, 8, 8), n0=30, n=250, alpha=0.01, batch_size=100)
    assert denoiser.images == 30 + 250
    assert denoiser.calls == 1 + 3
    assert cert.radius_paper is not None
    assert cert.radius_paper >= cert.radius


def test_joint_voter_refuses_the_independent_radius():
    voter = JointDenoisedBranches(CountingDenoiser(), Recorder(1), Recorder(2))
    with pytest.raises(ValueError, match="coupled"):
        SmoothedClassifier(voter, Checkerboard(), 10, (0.25, 0.25), CertificateKind.INDEPENDENT)


def test_split_mode_branch_ignores_the_other_sub_image():
    torch.manual_seed(0)
    classifier_l, classifier_r = Recorder(1), Recorder(2)
    voter = SplitDenoisedBranches(CountingDenoiser(), classifier_l, classifier_r, sigma=0.5)
    noisy_l, noisy_r = torch.rand(4, 1, 8, 4), torch.rand(4, 1, 8, 4)
    fresh = torch.randn(4, 1, 8, 8)
    votes = voter([noisy_l, noisy_r], fresh)
    seen_by_l, seen_by_r = classifier_l.last_input, classifier_r.last_input
    other_votes = voter([noisy_l, torch.rand(4, 1, 8, 4)], fresh)
    assert torch.equal(classifier_l.last_input, seen_by_l)
    assert torch.equal(other_votes[:, 0], votes[:, 0])
    assert not torch.equal(classifier_r.last_input, seen_by_r)
    voter([torch.rand(4, 1, 8, 4), noisy_r], fresh)
    assert torch.equal(classifier_r.last_input, seen_by_r)
    assert not torch.equal(classifier_l.last_input, seen_by_l)


def test_split_mode_certifies_with_the_independent_radius_and_two_denoisings_per_sample():
    denoiser = CountingDenoiser()
    voter = SplitDenoisedBranches(denoiser, Recorder(1), Recorder(2), sigma=0.25)
    smoothed = SmoothedClassifier(voter, Checkerboard(), 10, (0.25, 0.25))
    assert smoothed.kind is CertificateKind.INDEPENDENT
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(4))
    first = smoothed.certify(x, n0=20, n=100, alpha=0.01, batch_size=64, seed=3)
    assert denoiser.images == 2 * (20 + 100)
    # The fresh fill-in noise is seeded per block too: batch size changes nothing.
    counts = smoothed.sample_counts(x, 100, 64, seed=3)
    assert (smoothed.sample_counts(x, 100, 7, seed=3) == counts).all()
    assert first.counts_top == tuple(counts[:, first.top_class])
    with pytest.raises(ValueError, match="fresh noise"):
        voter([torch.rand(2, 1, 8, 4), torch.rand(2, 1, 8, 4)], None)


def test_denoised_rs_is_classifier_after_denoiser():
    denoiser = CountingDenoiser()
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    smooth = Smooth(DenoisedClassifier(denoiser, classifier), 3, 0.5)
    smooth.certify(torch.rand(1, 8, 8), 10, 90, 0.01, 50)
    assert denoiser.images == 100


class NanAbove(nn.Module):
    """A 3-class classifier whose class-2 logit is NaN for inputs with a pixel above 0.9."""

    def forward(self, x):
        logits = torch.stack([x.flatten(1).mean(1), torch.zeros(x.shape[0]),
                              torch.full((x.shape[0],), -1.0)], 1)
        logits[x.flatten(1).amax(1) > 0.9, 2] = float("nan")
        return logits


def test_rows_with_non_finite_logits_vote_for_no_class():
    parts = [torch.rand(6, 1, 8, 4, generator=torch.Generator().manual_seed(j)) * 0.8
             for j in (0, 1)]
    parts[0][[1, 4], 0, 0, 0] = 0.95
    votes = BranchClassifiers([NanAbove(), NanAbove()])(parts)
    assert votes.tolist() == [[0, 0], [NONFINITE_VOTE, 0], [0, 0],
                              [0, 0], [NONFINITE_VOTE, 0], [0, 0]]


def test_a_denoiser_that_outputs_nan_gives_no_votes():
    class NanDenoiser(nn.Module):
        def forward(self, x):
            return torch.full_like(x, float("nan"))

    parts = [torch.rand(3, 1, 8, 4), torch.rand(3, 1, 8, 4)]
    joint = JointDenoisedBranches(NanDenoiser(), Recorder(1), Recorder(2))
    split = SplitDenoisedBranches(NanDenoiser(), Recorder(1), Recorder(2), sigma=0.25)
    assert (joint(parts) == NONFINITE_VOTE).all()
    assert (split(parts, torch.randn(3, 1, 8, 8)) == NONFINITE_VOTE).all()
    smoothed = SmoothedClassifier(split, Checkerboard(), 10, (0.25, 0.25))
    cert = smoothed.certify(torch.rand(1, 8, 8), n0=10, n=50, alpha=0.01, batch_size=32)
    assert cert.abstained and cert.counts_top == (0, 0) and cert.nonfinite == 2 * 60
