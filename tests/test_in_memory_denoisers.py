"""diffusers objects and other modules given to OneShotDenoiser and Pipeline in memory."""

import pytest
import torch
from torch import nn

from denoised_drs.diffusion import OneShotDenoiser
from denoised_drs.pipeline import Pipeline

SIGMA = 0.25


def tiny_unet(**options):
    from diffusers import UNet2DModel

    torch.manual_seed(3)
    return UNet2DModel(sample_size=16, block_out_channels=(32, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8,
                       **options).eval()


class MeanClassifier(nn.Module):
    num_classes = 3

    def forward(self, x):
        return x.mean(dim=(2, 3))


def rs_pipeline(denoiser, **settings):
    return Pipeline(mode="rs", classifier=MeanClassifier(), denoiser=denoiser, sigma=SIGMA,
                    n0=4, n=8, batch=8, device="cpu", **settings)


def test_a_bare_unet2dmodel_with_a_scheduler_denoises_as_diffusers_computes():
    from diffusers import DDPMScheduler

    unet, scheduler = tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    torch.manual_seed(0)
    x_noisy = torch.rand(2, 3, 16, 16) + SIGMA * torch.randn(2, 3, 16, 16)
    t = OneShotDenoiser(lambda x, t: x, scheduler, SIGMA).timestep
    abar = scheduler.alphas_cumprod[t].double()
    x_t = abar.sqrt().float() * (2 * x_noisy - 1)
    with torch.no_grad():
        eps = unet(x_t, torch.full((2,), float(t))).sample
    x0 = ((1 / abar).sqrt().float() * x_t - (1 / abar - 1).sqrt().float() * eps).clamp(-1, 1)

    denoiser = OneShotDenoiser(unet, scheduler, SIGMA)
    assert denoiser.size_multiple == 2
    assert torch.allclose(denoiser(x_noisy), (x0 + 1) / 2, atol=1e-5)
    # ... and in a pipeline, which certifies with it.
    pipe = rs_pipeline(denoiser)
    pipe.check_image_shape((3, 16, 16))
    assert pipe.certify(torch.rand(1, 3, 16, 16), [0])[0].n_used == 8


def test_a_class_conditional_unet2dmodel_is_refused():
    from diffusers import DDPMScheduler

    with pytest.raises(ValueError, match="unconditional models only"):
        OneShotDenoiser(tiny_unet(num_class_embeds=10), DDPMScheduler(), SIGMA)


def test_a_network_returning_no_tensor_is_a_value_error():
    def network(x_t, timesteps):
        return {"sample": x_t}

    with pytest.raises(ValueError, match="returned a dict, not a tensor"):
        OneShotDenoiser(network, [0.9, 0.5, 0.1], SIGMA)(torch.rand(1, 3, 8, 8))


def test_the_pipeline_refuses_a_bare_diffusion_network_when_built():
    with pytest.raises(ValueError, match=r"needs sample, timestep.*OneShotDenoiser\(network, "
                                         r"scheduler, sigma\)"):
        rs_pipeline(tiny_unet())


class Halve(nn.Module):
    def forward(self, x):
        return x[..., ::2, ::2]


def test_the_pipeline_refuses_a_module_that_does_not_map_images_to_images():
    # With the images' shape in the configuration: when the pipeline is built.
    with pytest.raises(ValueError, match=r"Halve maps images \(1, 3, 32, 32\) to "
                                         r"\(1, 3, 16, 16\)"):
        rs_pipeline(Halve(), dataset="cifar10")
    with pytest.raises(ValueError, match="cannot take images of shape"):
        rs_pipeline(nn.Conv2d(1, 1, 3, padding=1), dataset="cifar10")
    # Without it: by check_image_shape, and on any call.
    pipe = rs_pipeline(Halve())
    with pytest.raises(ValueError, match="not to images of the same shape"):
        pipe.check_image_shape((3, 16, 16))
    with pytest.raises(ValueError, match="not to images of the same shape"):
        pipe.certify(torch.rand(1, 3, 16, 16), [0])
    # A module that maps images to images is used as given.
    pipe = rs_pipeline(nn.Identity(), dataset="cifar10")
    pipe.check_image_shape((3, 32, 32))
    assert pipe.certify(torch.rand(1, 3, 32, 32), [0])[0].n_used == 8
