"""The engine's per-batch step (denoised_drs.vote_step): compiled into one graph, padded
short batches, and autocast over the classifiers too (issue 24, items 2 and 3).

Compilation is checked with dynamo's tracer and a backend that runs the traced graph
eagerly (inductor would spend minutes compiling on this CPU): ``fullgraph=True`` makes
any graph break (a data-dependent branch, a host read) an error, and every trace is
counted, so a recompilation for a short batch or another call would show.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from denoised_drs.diffusion import openai_unet
from denoised_drs.diffusion.denoiser import OneShotDenoiser
from denoised_drs.partition import get_partition
from denoised_drs.smoothing import SmoothedClassifier
from denoised_drs.vote_step import VoteStep
from denoised_drs.voters import (
    BranchClassifiers,
    DenoisedClassifier,
    JointDenoisedBranches,
    SplitDenoisedBranches,
)

SIGMA = 0.25


@pytest.fixture
def traced(monkeypatch) -> list:
    """``torch.compile`` as dynamo's tracer with fullgraph=True and an eager backend:
    the list holds each graph traced."""
    graphs: list = []
    real_compile = torch.compile

    def backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    def compile_one_graph(function, **options):
        return real_compile(function, backend=backend, fullgraph=True, dynamic=False)

    monkeypatch.setattr(torch, "compile", compile_one_graph)
    return graphs


def classifier(seed: int, pixels: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 10))


def denoiser() -> OneShotDenoiser:
    torch.manual_seed(0)
    network = openai_unet(image_size=28, in_channels=1, num_channels=32, num_res_blocks=1,
                          channel_mult="1,2", attention_resolutions="14")
    betas = np.linspace(1e-4, 0.02, 1000)
    return OneShotDenoiser(network, np.cumprod(1 - betas), SIGMA)


def smoothed(name: str, **options) -> SmoothedClassifier:
    """RS, DRS joint or DRS split over a small UNet, with the step ``options``."""
    if name == "rs":
        voter = BranchClassifiers([DenoisedClassifier(denoiser(), classifier(1, 28 * 28))])
        return SmoothedClassifier(voter, get_partition("identity"), 10, [SIGMA], **options)
    halves = classifier(1, 28 * 14), classifier(2, 28 * 14)
    board = get_partition("checkerboard")
    if name == "joint":
        voter = JointDenoisedBranches(denoiser(), *halves, partition=board)
    else:
        voter = SplitDenoisedBranches(denoiser(), *halves, sigma=SIGMA, partition=board)
    return SmoothedClassifier(voter, board, 10, [SIGMA, SIGMA], **options)


IMAGE = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["rs", "joint", "split"])
def test_the_compiled_step_is_one_graph_for_every_batch_and_call(traced, name):
    compiled = smoothed(name, compile_mode="default")
    eager = smoothed(name)
    assert compiled.step.padded and not eager.step.padded
    # 20 samples at batch 8: two full batches and a short one, padded to 8.
    counts = compiled.sample_counts(IMAGE, 20, 8, seed=1)
    assert len(traced) == 1
    # The traced operations, run eagerly, give the eager step's votes.
    assert np.array_equal(counts, eager.sample_counts(IMAGE, 20, 8, seed=1))
    assert counts.sum() == 20 * compiled.num_branches
    # Another call, of another length, continuing the stream (an adaptive look): no retrace.
    more = compiled.sample_counts(IMAGE, 5, 8, seed=1, start=20)
    assert np.array_equal(more, eager.sample_counts(IMAGE, 5, 8, seed=1, start=20))
    assert len(traced) == 1
    certificate = compiled.certify_adaptive(IMAGE, 8, 24, 0.01, 8, seed=2)
    assert certificate.n_used <= 24 and len(traced) == 1
    # PREDICT's mixed branches take one more graph (the branch choices are an input).
    compiled.predict(IMAGE, 12, 0.01, 8)
    assert len(traced) == (1 if name == "rs" else 2)


class ConstantVoter(nn.Module):
    """Votes ``vote`` in every branch for every sample."""

    needs_fresh_noise = False

    def __init__(self, vote: int, branches: int) -> None:
        super().__init__()
        self.vote, self.branches = vote, branches

    def forward(self, noisy_parts, fresh_noise=None):
        return torch.full((noisy_parts[0].shape[0], self.branches), self.vote, dtype=torch.long)


@pytest.mark.parametrize("compile_mode", [None, "default"])
def test_padding_rows_are_counted_nowhere(traced, compile_mode):
    board = get_partition("checkerboard")
    clean = board.split(IMAGE.unsqueeze(0))
    noise = torch.zeros(8, 1, 28, 28)
    step = VoteStep(ConstantVoter(3, 2), board, (SIGMA, SIGMA), 10, compile_mode=compile_mode)
    counts, misnamed = step(clean, noise, None, None, 5)
    # 5 real rows of 8: each branch's bin of class 3 counts 5; the 3 padding rows of
    # both branches land in the last, dropped bin; no vote is out of range.
    assert counts.tolist() == [0, 0, 0, 5, 0, 0, 0, 0, 0, 0] * 2 + [6]
    assert int(misnamed) == 0
    wrong = VoteStep(ConstantVoter(99, 2), board, (SIGMA, SIGMA), 10, compile_mode=compile_mode)
    counts, misnamed = wrong(clean, torch.zeros(8, 1, 28, 28), None, None, 5)
    # Out-of-range votes are refused by their number among the real rows only.
    assert int(misnamed) == 5 * 2 and counts.tolist() == [0] * 20 + [16]


def test_a_short_batch_pads_to_the_full_batch_in_a_compiled_engine(traced):
    seen = []

    class Recording(ConstantVoter):
        def forward(self, noisy_parts, fresh_noise=None):
            seen.append(noisy_parts[0].shape[0])
            return super().forward(noisy_parts, fresh_noise)

    voter = Recording(4, 1)
    engine = SmoothedClassifier(voter, get_partition("identity"), 10, [SIGMA], kind="rs",
                                compile_mode="default")
    counts = engine.sample_counts(IMAGE, 13, 8)
    assert counts.tolist() == [[0, 0, 0, 0, 13, 0, 0, 0, 0, 0]]
    eager = SmoothedClassifier(voter, get_partition("identity"), 10, [SIGMA], kind="rs")
    seen.clear()
    eager.sample_counts(IMAGE, 13, 8)
    assert seen == [8, 5]  # eager: the last batch as short as it is


def test_short_batches_pad_to_a_few_static_shapes(traced):
    seen = []
    engine = SmoothedClassifier(ConstantVoter(4, 1), get_partition("identity"), 10, [SIGMA],
                                kind="rs", compile_mode="default")
    step = engine.step

    class Recording:
        """The step, recording each batch's shape (outside the traced code)."""

        def __getattr__(self, name):
            return getattr(step, name)

        def __call__(self, clean_parts, noise, *args):
            seen.append(noise.shape[0])
            return step(clean_parts, noise, *args)

    engine.step = Recording()
    # The next power of two, at least 64, at most the batch; full batches as they are.
    assert [step.padded_size(c, 256) for c in (1, 44, 64, 65, 100, 200, 256)] == [
        64, 64, 64, 128, 128, 256, 256]
    assert step.padded_size(3, 8) == 8
    assert engine.sample_counts(IMAGE, 300, 256)[0, 4] == 300
    assert engine.sample_counts(IMAGE, 100, 256)[0, 4] == 100  # an N0 stage
    assert engine.sample_counts(IMAGE, 1000, 256)[0, 4] == 1000  # 3 x 256 + 232 -> 256
    assert seen == [256, 64, 128, 256, 256, 256, 256]
    # One graph per shape met: 256, 64 and 128.
    assert len(traced) == 3


def test_autocast_runs_the_classifiers_in_bf16_within_tolerance():
    dtypes = []
    net = classifier(1, 28 * 28)
    net[1].register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    voter = BranchClassifiers([net])
    fp32 = SmoothedClassifier(voter, get_partition("identity"), 10, [SIGMA], kind="rs")
    bf16 = SmoothedClassifier(voter, get_partition("identity"), 10, [SIGMA], kind="rs",
                              autocast_dtype=torch.bfloat16)
    reference = fp32.sample_counts(IMAGE, 400, 100, seed=3)
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    reduced = bf16.sample_counts(IMAGE, 400, 100, seed=3)
    assert set(dtypes) == {torch.bfloat16}
    # The same noise: bf16 logits change only near-ties. Per class the counts stay within
    # 5 % of the samples (the vote of a sample flips only when two logits lie within
    # bf16's rounding of each other).
    assert reduced.sum() == reference.sum() == 400
    assert np.abs(reduced - reference).max() <= 20


def test_more_steps_in_one_process_than_dynamos_recompile_limit_all_compile(traced):
    # Dynamo compiles one code object at most recompile_limit (8) times and then runs it
    # eagerly (with fullgraph=True: raises). Each step compiles its own code object.
    board = get_partition("checkerboard")
    clean = board.split(IMAGE.unsqueeze(0))
    for vote in range(10):
        step = VoteStep(ConstantVoter(vote, 2), board, (SIGMA, SIGMA), 10,
                        compile_mode="default")
        counts, _ = step(clean, torch.zeros(4, 1, 28, 28), None, None, 4)
        assert counts[vote] == 4
    assert len(traced) == 10
