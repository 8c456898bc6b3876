"""The sampling loop makes no host-device synchronisation (issue 24, item 1).

On CUDA every ``.item()``, ``.tolist()``, ``.cpu()``, truth test of a tensor, and
``torch.bincount`` (which reads the largest vote back) stalls the GPU until the host
catches up. On a CPU none of them costs anything, so these tests count them instead:
the calls in one look must not grow with the number of batches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from denoised_drs import DualSmooth, Smooth

HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


def small_classifier(seed: int, pixels: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 10))


def smoothers():
    # DRS branches see a 28 x 14 half of the image each.
    return {"rs": Smooth(small_classifier(0, 28 * 28), 10, 0.25),
            "drs": DualSmooth(small_classifier(1, 28 * 14), small_classifier(2, 28 * 14), 10,
                              0.25)}


@pytest.fixture
def host_reads(monkeypatch):
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def recording(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, recording)
    return calls


@pytest.mark.parametrize("kind", ["rs", "drs"])
def test_a_look_reads_back_from_the_device_as_often_for_one_batch_as_for_eight(kind, host_reads):
    smoothed = smoothers()[kind]
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    per_look = []
    for batches in (1, 8):
        host_reads.clear()
        smoothed.sample_counts(image, 16 * batches, 16)
        per_look.append(len(host_reads))
    assert per_look[0] == per_look[1], host_reads


def test_votes_are_counted_without_bincount(monkeypatch):
    smoothed = smoothers()["drs"]
    image = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = smoothed.sample_counts(image, 64, 16)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.bincount reads the votes back to the host on CUDA")

    monkeypatch.setattr(torch, "bincount", refuse)
    counts = smoothed.sample_counts(image, 64, 16)
    assert np.array_equal(counts, expected) and counts.sum() == 2 * 64


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_timestep_per_chunk_gives_the_per_sample_values_bit_for_bit(prediction_type):
    # The engine's chunks share one timestep: their coefficients are Python floats and
    # their timesteps are filled on the device, with the per-sample path's values.
    from denoised_drs.diffusion import openai_unet
    from denoised_drs.diffusion.denoiser import OneShotDenoiser

    torch.manual_seed(0)
    network = openai_unet(image_size=28, in_channels=1, num_channels=32, num_res_blocks=1,
                          channel_mult="1,2", attention_resolutions="", num_head_channels=32,
                          learn_sigma=False, use_scale_shift_norm=True, dropout=0.0).eval()
    alphas_cumprod = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    denoiser = OneShotDenoiser(network, alphas_cumprod, 0.25, timestep_scale=0.7,
                               prediction_type=prediction_type)
    x_t = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        shared = denoiser.predict_xstart(x_t, 37)
        per_sample = denoiser.predict_xstart(x_t, torch.tensor([37, 37, 37, 37, 37, 38]))
    assert torch.equal(shared[:5], per_sample[:5])
    assert not torch.equal(shared[5], per_sample[5])


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_cuda_gets_the_autotuner_and_tf32_and_a_cpu_nothing(device):
    # Setting the flags needs no GPU; they are restored after the test.
    from denoised_drs.pipeline import configure_cuda_backends

    flags = ((torch.backends.cudnn, "benchmark"), (torch.backends.cuda.matmul, "allow_tf32"),
             (torch.backends.cudnn, "allow_tf32"))
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        for owner, name in flags:
            setattr(owner, name, False)
        configure_cuda_backends(torch.device(device))
        assert [getattr(owner, name) for owner, name in flags] == [device == "cuda"] * 3
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)
