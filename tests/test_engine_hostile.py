"""Hostile input to the certification engine and its configuration (issue 23).

Labels and indices that are not integers, sample counts and sigmas that could never
finish or overflow, images on the meta device, radii beyond a float, logits of -inf,
the look behind an adaptive certificate, and torch versions without
``torch.OutOfMemoryError``.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from denoised_drs.adaptive import check_radii, look_schedule, spending
from denoised_drs.bounds import branch_alpha, clopper_pearson_lower
from denoised_drs.certificate import MAX_SAMPLES, check_counts
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig
from denoised_drs.scheme import MAX_SIGMA
from denoised_drs.smoothing import DualSmooth, Smooth

SHAPE = (1, 4, 4)
NUM_CLASSES = 10


class Constant(nn.Module):
    """Logits that always pick class ``top`` (``log`` of a softmax when ``log_softmax``)."""

    num_classes = NUM_CLASSES

    def __init__(self, top: int = 3, log_of_softmax: bool = False) -> None:
        super().__init__()
        logits = torch.full((NUM_CLASSES,), -200.0)
        logits[top] = 0.0
        # log(softmax(.)) underflows to -inf where log_softmax stays finite: same argmax.
        self.logits = torch.log(torch.softmax(logits, 0)) if log_of_softmax else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1).clone()


def image() -> torch.Tensor:
    return torch.full(SHAPE, 0.5)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(mode="rs", classifier=Constant(), sigma=0.25, n0=10, n=20, batch=20,
                    device="cpu")


# -- item 5: labels and indices are integers ---------------------------------------


@pytest.mark.parametrize("label", [9.7, 3.0, True, "3", np.float64(3), torch.tensor(3.0),
                                   torch.tensor([3]), np.array(3.0), np.bool_(True), None])
def test_a_label_that_is_no_integer_is_refused(pipe, label):
    with pytest.raises((TypeError, ValueError), match="label"):
        pipe.certify_one(image(), label, 0)
    with pytest.raises((TypeError, ValueError), match="label"):
        pipe.certify([image()], [label])


@pytest.mark.parametrize("index", [1.5, 2.0, False, "1", np.float32(1), torch.tensor(1.5)])
def test_an_index_that_is_no_integer_is_refused(pipe, index):
    with pytest.raises((TypeError, ValueError), match="index"):
        pipe.certify_one(image(), 3, index)
    with pytest.raises((TypeError, ValueError), match="index"):
        pipe.certify([image()], [3], [index])
    with pytest.raises((TypeError, ValueError), match="index"):
        pipe.predict([image()], [index])


def test_a_negative_index_is_refused(pipe):
    with pytest.raises(ValueError, match="index"):
        pipe.certify_one(image(), 3, -1)


def test_integer_scalars_of_numpy_and_torch_are_labels_and_indices(pipe):
    plain = pipe.certify_one(image(), 3, 7)
    for label, index in ((np.int64(3), np.int32(7)), (torch.tensor(3), torch.tensor(7)),
                         (np.uint8(3), torch.tensor(7, dtype=torch.int16)),
                         (np.array(3), np.array(7, dtype=np.int8))):
        record = pipe.certify_one(image(), label, index)
        assert type(record.label) is int and type(record.idx) is int
        assert replace(record, time=plain.time) == plain
    records = pipe.certify(torch.stack([image(), image()]), torch.tensor([3, 4]),
                           np.array([7, 8]))
    assert [(r.idx, r.label, r.correct) for r in records] == [(7, 3, 1), (8, 4, 0)]


def test_a_bad_label_late_in_the_list_is_refused_before_any_image_is_certified(pipe,
                                                                                monkeypatch):
    certified = []
    monkeypatch.setattr(pipe, "certify_one", lambda *args: certified.append(args))
    with pytest.raises(TypeError, match="label"):
        pipe.certify([image()] * 3, [3, 4, 9.7])
    with pytest.raises(ValueError, match="outside"):
        pipe.certify([image()] * 3, [3, 4, 10])
    with pytest.raises(TypeError, match="index"):
        pipe.certify([image()] * 3, [3, 4, 5], [0, 1, 2.5])
    assert certified == []


def test_a_seed_that_is_no_integer_is_refused():
    smooth = Smooth(Constant(), NUM_CLASSES, 0.25)
    for seed in (1.5, True, (0, 1.5), (0, "1"), ()):
        with pytest.raises((TypeError, ValueError), match="seed"):
            smooth.certify(image(), 10, 20, 0.01, 20, seed=seed)


# -- item 10: sample counts capped at what can finish --------------------------------


@pytest.mark.parametrize("counts", [{"n": 2**63}, {"n": 10**15}, {"n": MAX_SAMPLES + 1},
                                    {"n0": 10**12, "n": 10**12, "adaptive": True}])
def test_sample_counts_beyond_the_cap_are_refused_in_the_configuration(counts):
    with pytest.raises(ValueError, match=f"at most {MAX_SAMPLES:,}"):
        PipelineConfig(mode="rs", classifier="c.pt", **counts)


def test_the_cap_itself_is_accepted_and_lies_within_one_noise_stream():
    from denoised_drs.noise import BLOCK_SIZE, MAX_BLOCKS

    PipelineConfig(mode="rs", classifier="c.pt", n0=MAX_SAMPLES, n=MAX_SAMPLES)
    # A run that is accepted never runs out of noise midway, and no count nears int64.
    assert MAX_SAMPLES < MAX_BLOCKS * BLOCK_SIZE and 64 * MAX_SAMPLES < 2**63 - 1


def test_sample_counts_beyond_the_cap_are_refused_by_the_api():
    with pytest.raises(ValueError, match="at most"):
        check_counts(10, 2**63, 0.001, 100)
    with pytest.raises(ValueError, match="at most"):
        check_counts(2**63, 10, 0.001, 100)
    smooth = Smooth(Constant(), NUM_CLASSES, 0.25)
    with pytest.raises(ValueError, match="at most"):
        smooth.certify_adaptive(image(), 2**40, 2**40, 0.001, 100)
    with pytest.raises(ValueError, match="at most"):
        smooth.predict(image(), 2**63, 0.001, 100)
    with pytest.raises(ValueError, match="at most"):
        smooth.sample_counts(image(), 2**63, 100)


# -- item 12: absurd sigmas, meta images, radii beyond a float -----------------------


@pytest.mark.parametrize("sigmas", [{"sigma": 1e30}, {"sigma": MAX_SIGMA * 1.01},
                                    {"sigma": 0.25, "sigma_r": 1e30},
                                    {"sigma": [0.25, 1e30]}])
def test_an_absurd_sigma_is_refused_in_the_configuration(sigmas):
    with pytest.raises(ValueError, match=f"at most {MAX_SIGMA:g}"):
        PipelineConfig(mode="drs", classifier_l="l.pt", classifier_r="r.pt", **sigmas)


def test_the_largest_sigma_is_accepted_and_absurd_ones_refused_by_the_api():
    PipelineConfig(mode="rs", classifier="c.pt", sigma=MAX_SIGMA)
    Smooth(Constant(), NUM_CLASSES, MAX_SIGMA)
    with pytest.raises(ValueError, match="at most"):
        Smooth(Constant(), NUM_CLASSES, 1e30)
    with pytest.raises(ValueError, match="at most"):
        DualSmooth(Constant(), Constant(), NUM_CLASSES, 0.25, 1e30)


def test_an_image_on_the_meta_device_is_refused(pipe):
    meta = torch.empty(SHAPE, device="meta")
    with pytest.raises(ValueError, match="meta"):
        pipe.certify_one(meta, 3, 0)
    with pytest.raises(ValueError, match="meta"):
        pipe.predict([meta])


@pytest.mark.parametrize("radii", [[10**400], [0.5, 10**400], [float("1e400")], ["0.3"],
                                   [True], [None]])
def test_radii_beyond_a_float_or_not_numbers_are_one_clear_error(radii):
    with pytest.raises(ValueError, match="radii"):
        check_radii(radii)
    with pytest.raises(ValueError, match="radii"):
        PipelineConfig(mode="rs", classifier="c.pt", adaptive=True, radii=radii)
    smooth = Smooth(Constant(), NUM_CLASSES, 0.25)
    with pytest.raises(ValueError, match="radii"):
        smooth.certify_adaptive(image(), 10, 200, 0.01, 100, radii=radii)


# -- item 14: the look behind an adaptive certificate --------------------------------


def test_a_fixed_n_certificate_is_one_look_with_all_of_alpha():
    cert = Smooth(Constant(), NUM_CLASSES, 0.25).certify(image(), 10, 300, 0.01, 100)
    assert (cert.n_look, cert.alpha_look) == (300, 0.01)
    assert type(cert.n_look) is int and type(cert.alpha_look) is float


@pytest.mark.parametrize("stop", [{"radii": [0.2, 0.4]}, {"tolerance": 0.5}])
def test_an_adaptive_certificate_carries_its_looks_n_and_alpha_share(stop):
    smooth = DualSmooth(Constant(), Constant(), NUM_CLASSES, 0.25)
    n0, n_max, alpha = 10, 5000, 0.01
    cert = smooth.certify_adaptive(image(), n0, n_max, alpha, 500, **stop)
    looks = look_schedule(n0, n_max)
    shares = spending(alpha, len(looks))
    assert cert.n_look in looks and cert.n_look < n_max  # stopped early, unanimous votes
    assert cert.alpha_look == shares[looks.index(cert.n_look)] < alpha
    assert type(cert.n_look) is int and type(cert.alpha_look) is float
    # The row is reconstructible: each pA is the bound of its count at that look.
    for count, p_lower in zip(cert.counts_top, cert.p_lower):
        assert p_lower == clopper_pearson_lower(count, cert.n_look,
                                                branch_alpha(cert.alpha_look, 2))


# -- item 15: a logit of -inf is a vote ----------------------------------------------


def test_log_of_softmax_with_minus_inf_entries_votes_normally():
    classifier = Constant(top=3, log_of_softmax=True)
    assert bool(torch.isinf(classifier.logits).any())  # the case at hand
    cert = Smooth(classifier, NUM_CLASSES, 0.25).certify(image(), 10, 200, 0.01, 100)
    assert cert.nonfinite == 0 and cert.prediction == 3 and cert.counts_top == (200,)
    dual = DualSmooth(classifier, Constant(top=3), NUM_CLASSES, 0.25)
    cert = dual.certify(image(), 10, 200, 0.01, 100)
    assert cert.nonfinite == 0 and cert.counts_top == (200, 200)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nan_or_an_infinite_maximum_still_votes_for_no_class(bad):
    classifier = Constant(top=3, log_of_softmax=True)
    classifier.logits[5] = bad
    cert = Smooth(classifier, NUM_CLASSES, 0.25).certify(image(), 10, 200, 0.01, 100)
    assert cert.nonfinite == 210 and cert.abstained
    everything_minus_inf = Constant()
    everything_minus_inf.logits[:] = -float("inf")
    cert = Smooth(everything_minus_inf, NUM_CLASSES, 0.25).certify(image(), 10, 200, 0.01, 100)
    assert cert.nonfinite == 210 and cert.abstained


# -- item 17: torch older than 2.5 (no torch.OutOfMemoryError) -----------------------


class Raises(nn.Module):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


def test_the_engine_runs_on_a_torch_without_torch_out_of_memory_error(monkeypatch):
    monkeypatch.delattr(torch, "OutOfMemoryError")
    smooth = Smooth(Raises(RuntimeError("mat1 and mat2 shapes cannot be multiplied")),
                    NUM_CLASSES, 0.25)
    with pytest.raises(ValueError, match="do not fit the models: mat1"):
        smooth.certify(image(), 10, 20, 0.01, 20)
    # Running out of device memory is not bad input: it passes through unchanged.
    out_of_memory = torch.cuda.OutOfMemoryError("CUDA out of memory")
    smooth = Smooth(Raises(out_of_memory), NUM_CLASSES, 0.25)
    with pytest.raises(torch.cuda.OutOfMemoryError) as raised:
        smooth.certify(image(), 10, 20, 0.01, 20)
    assert raised.value is out_of_memory

