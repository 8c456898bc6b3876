"""choose_batch: the largest batch whose measured forward pass fits in a share of free memory.

Every test uses a fake ``bytes_at`` (no device): a memory curve of the batch, with a
record of the batches it was asked about.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from denoised_drs.batch_memory import BatchChoice, choose_batch
from denoised_drs.noise import BLOCK_SIZE

MIB = 1 << 20
GIB = 1 << 30


class Fake:
    """A memory curve ``peak(b)``, recording each batch it is asked about."""

    def __init__(self, peak):
        self.peak = peak
        self.calls: list[int] = []

    def __call__(self, batch: int) -> int:
        self.calls.append(batch)
        return self.peak(batch)


def linear(fixed: int, per_sample: int) -> Fake:
    return Fake(lambda b: fixed + b * per_sample)


def budget(free: int, fraction: float = 0.85) -> int:
    return math.floor(fraction * free)


@pytest.mark.parametrize(
    ("fixed", "per_sample", "free"),
    [
        (1_200 * MIB, 31 * MIB + 12_345, 70 * GIB),
        (0, 5 * MIB, 8 * GIB),
        (300 * MIB, 777_777, 24 * GIB + 123),
        (2 * GIB, 1 * MIB, 3 * GIB),
    ],
)
def test_linear_memory_gives_the_largest_multiple_of_64_under_the_budget(
    fixed, per_sample, free
):
    fake = linear(fixed, per_sample)
    choice = choose_batch(fake, free, cap=10**9)
    assert BLOCK_SIZE == 64
    assert choice.batch % 64 == 0 and choice.batch >= 64
    assert fake.peak(choice.batch) <= budget(free)
    assert fake.peak(choice.batch + 64) > budget(free)
    # The two probes recover the model exactly; one verifying pass of the choice.
    assert (choice.per_sample_bytes, choice.fixed_bytes) == (per_sample, fixed)
    assert fake.calls == [8, 16, choice.batch]
    assert choice.free_bytes == free and choice.fraction == 0.85


def test_other_fraction_and_multiple():
    fake = linear(10 * MIB, 3 * MIB)
    choice = choose_batch(fake, 4 * GIB, cap=10**6, fraction=0.5, multiple=100)
    assert choice.batch % 100 == 0
    assert fake.peak(choice.batch) <= 2 * GIB < fake.peak(choice.batch + 100)


@pytest.mark.parametrize("cap", [1000, 999, 64, 17])
def test_a_cap_below_the_budget_limited_batch_is_the_batch(cap):
    fake = linear(100 * MIB, 1 * MIB)
    choice = choose_batch(fake, 80 * GIB, cap=cap)
    assert choice.batch == cap
    assert max(fake.calls) == cap  # nothing beyond the cap is ever run


def test_a_cap_between_the_probes_replaces_the_larger_probe():
    fake = linear(100 * MIB, 1 * MIB)
    choice = choose_batch(fake, 80 * GIB, cap=12)
    assert choice.batch == 12
    assert fake.calls == [8, 12]
    assert (choice.per_sample_bytes, choice.fixed_bytes) == (1 * MIB, 100 * MIB)


@pytest.mark.parametrize("cap", [1, 3, 8])
def test_a_tiny_cap_is_checked_with_one_pass(cap):
    fake = linear(100 * MIB, 1 * MIB)
    choice = choose_batch(fake, 1 * GIB, cap=cap)
    assert choice.batch == cap
    assert fake.calls == [cap]
    assert choice.fixed_bytes == 0
    assert choice.per_sample_bytes * cap >= fake.peak(cap)


def test_a_tiny_cap_that_does_not_fit_is_refused():
    fake = linear(2 * GIB, 1 * MIB)
    with pytest.raises(ValueError) as error:
        choose_batch(fake, 1 * GIB, cap=4)
    message = str(error.value)
    assert "\n" not in message
    assert "a batch of 4 needs 2.0 GiB" in message and "1.0 GiB free" in message


def test_not_even_the_smallest_probe_fitting_is_refused_in_one_line():
    fake = linear(1 * GIB, 500 * MIB)  # 8 samples: 4.9 GiB
    with pytest.raises(ValueError) as error:
        choose_batch(fake, 4 * GIB, cap=10**6)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("a batch of 8 needs 4.9 GiB for one forward pass")
    assert "more than 85% of the 4.0 GiB free (3.4 GiB)" in message
    assert "results do not depend on it" in message
    assert fake.calls == [8]  # the larger probe is never run


def test_only_the_larger_probe_not_fitting_gives_a_batch_between_them():
    fake = linear(0, 100 * MIB)  # budget 85% of 2 GiB = 1740.8 MiB: 17 samples, 16 do not fit
    choice = choose_batch(fake, 2 * GIB, cap=10**6)
    assert choice.batch == 17  # below 64: not rounded
    assert fake.calls == [8, 16, 17]


def noisy(seed: int, fixed: int, per_sample: int, spread: float) -> Fake:
    """Linear memory times a factor in [1 - spread, 1 + spread], the same for the same batch."""
    def peak(b: int) -> int:
        factor = 1 + spread * (2 * random.Random(seed * 1_000_003 + b).random() - 1)
        return int((fixed + b * per_sample) * factor)
    return Fake(peak)


@pytest.mark.parametrize("spread", [0.05, 0.3, 0.9])
def test_noisy_memory_never_gets_a_batch_over_the_budget(spread):
    free = 40 * GIB
    for seed in range(200):
        fake = noisy(seed, 500 * MIB, 20 * MIB, spread)
        choice = choose_batch(fake, free, cap=10**7)
        assert fake.peak(choice.batch) <= budget(free), seed
        assert choice.batch >= 8
        assert len(fake.calls) <= 4
        assert choice.per_sample_bytes > 0 and choice.fixed_bytes >= 0


@pytest.mark.parametrize(
    "peak",
    [
        lambda b: int(2 * GIB + 300 * MIB * math.sqrt(b)),  # sublinear
        lambda b: int(GIB + 50 * MIB * math.log2(b)),  # barely growing
        lambda b: 3 * GIB,  # flat: the fitted slope is 0
        lambda b: 3 * GIB - b * MIB,  # decreasing: a negative slope (noise)
    ],
    ids=["sqrt", "log", "flat", "decreasing"],
)
def test_sublinear_or_flat_memory_is_handled_conservatively(peak):
    fake = Fake(peak)
    free = 16 * GIB
    choice = choose_batch(fake, free, cap=10**7)
    assert fake.peak(choice.batch) <= budget(free)
    # The model predicts at least what the larger probe measured.
    assert choice.fixed_bytes + 16 * choice.per_sample_bytes >= fake.peak(16)
    assert choice.fixed_bytes >= 0 and choice.per_sample_bytes > 0
    assert choice.batch >= 16


def test_a_flat_curve_uses_the_larger_probe_per_sample():
    choice = choose_batch(Fake(lambda b: 3 * GIB), 16 * GIB, cap=10**7)
    assert choice.fixed_bytes == 0
    assert choice.per_sample_bytes == 3 * GIB // 16
    assert choice.batch == 64  # 13.6 GiB / 192 MiB = 72, down to 64


@pytest.mark.parametrize("power", [1.5, 2.0, 3.0])
def test_superlinear_memory_is_shrunk_by_the_verification(power):
    fake = Fake(lambda b: int(100 * MIB + MIB * b**power))
    free = 64 * GIB
    choice = choose_batch(fake, free, cap=10**7)
    assert fake.peak(choice.batch) <= budget(free)
    assert choice.batch > 16  # the chord shrink finds a batch beyond the probes
    assert len(fake.calls) == 4


def test_a_verification_that_fails_twice_falls_back_to_the_larger_probe():
    free = 8 * GIB
    # Linear at the probes, then just over the budget everywhere beyond them.
    fake = Fake(lambda b: b * MIB if b <= 16 else budget(free) + 1 + b)
    choice = choose_batch(fake, free, cap=10**7)
    assert choice.batch == 16
    first, shrunk = fake.calls[2:]
    assert len(fake.calls) == 4 and 16 < shrunk < first and shrunk % 64 == 0


def test_a_model_below_a_fitting_probe_keeps_the_probe():
    # A steep slope between the probes predicts fewer than 16 samples, but 16 fit.
    fake = Fake(lambda b: 100 * MIB if b <= 8 else 1_500 * MIB)
    choice = choose_batch(fake, 2 * GIB, cap=10**6)
    assert choice.batch == 16
    assert fake.calls == [8, 16]


def test_the_choice_is_deterministic():
    choices = [choose_batch(noisy(7, GIB, 9 * MIB, 0.2), 30 * GIB, cap=50_000)
               for _ in range(3)]
    assert len(set(choices)) == 1


def test_describe_is_one_line_with_free_per_sample_fixed_and_fraction():
    choice = BatchChoice(2048, int(31.2 * MIB), int(1.2 * GIB), int(70.1 * GIB))
    assert choice.describe() == (
        "batch 2048 chosen from free memory: 70.1 GiB free, 31.2 MiB per sample + "
        "1.2 GiB fixed (85% used at most)"
    )
    small = BatchChoice(3, 700, 0, 5000, fraction=0.5)
    assert small.describe() == (
        "batch 3 chosen from free memory: 4.9 KiB free, 700 B per sample + 0 B fixed "
        "(50% used at most)"
    )


def test_the_choice_is_frozen():
    choice = BatchChoice(64, 1, 0, 100)
    with pytest.raises(AttributeError):
        choice.batch = 128  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"free": -1}, "free must be"),
        ({"free": 1.5e9}, "free must be"),
        ({"cap": 0}, "cap must be"),
        ({"cap": True}, "cap must be"),
        ({"probes": (16, 8)}, "probes must be"),
        ({"probes": (0, 8)}, "probes must be"),
        ({"probes": (8,)}, "probes must be"),
        ({"fraction": 0}, "fraction must be"),
        ({"fraction": 1.5}, "fraction must be"),
        ({"fraction": float("nan")}, "fraction must be"),
        ({"multiple": 0}, "multiple must be"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, fragment):
    arguments = {"free": 8 * GIB, "cap": 1000, **kwargs}
    fake = linear(0, MIB)
    with pytest.raises(ValueError, match=fragment):
        choose_batch(fake, **arguments)
    assert fake.calls == []


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), None])
def test_a_bad_measurement_is_refused(value):
    with pytest.raises(ValueError, match=r"bytes_at\(8\) returned"):
        choose_batch(lambda b: value, 8 * GIB, cap=1000)


def test_no_device_is_touched(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("choose_batch touched CUDA")

    for name in ("is_available", "mem_get_info", "max_memory_allocated",
                 "reset_peak_memory_stats", "synchronize", "memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    choice = choose_batch(linear(GIB, 10 * MIB), 20 * GIB, cap=10**6)
    assert choice.batch > 0
