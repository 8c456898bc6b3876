"""OneShotDenoiser and denoiser loading (presets + checkpoint files, diffusers directories)."""

import math

import numpy as np
import pytest
import torch
from reference_data import reference_path
from torch import nn

from denoised_drs.diffusion import (
    OneShotDenoiser,
    get_preset,
    load_denoiser_network,
    sigma_to_timestep,
)

PRESET_OF = {"improved": "improved-small", "guided": "guided-small"}


@pytest.fixture(scope="module", params=["improved", "guided"])
def reference(request):
    path = reference_path(f"{request.param}_small_reference.pt")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return request.param, path, data


@pytest.fixture(scope="module")
def improved_denoiser():
    path = reference_path("improved_small_reference.pt")
    return OneShotDenoiser.from_pretrained("improved-small", sigma=0.25, checkpoint_path=path)


def test_reference_pred_xstart(reference):
    """From a reference file loaded through the preset, exactly as a user would."""
    kind, path, data = reference
    denoiser = OneShotDenoiser.from_pretrained(PRESET_OF[kind], sigma=0.5, checkpoint_path=path)
    np.testing.assert_array_equal(denoiser.alphas_cumprod, data["alphas_cumprod"].numpy())
    x0 = denoiser.predict_xstart(data["x_t"], data["t"])
    assert (x0 - data["pred_xstart_clipped"]).abs().max() < 1e-4


def test_network_sees_the_rescaled_float_timestep(reference):
    kind, _, data = reference
    preset = get_preset(PRESET_OF[kind])
    seen = []

    def network(x_t, timesteps):
        seen.append(timesteps)
        return torch.zeros(x_t.shape[0], 6, *x_t.shape[2:])

    denoiser = OneShotDenoiser(
        network, preset.alphas_cumprod(), 0.25, timestep_scale=preset.timestep_scale
    )
    denoiser.predict_xstart(data["x_t"], data["t"])
    assert seen[0].dtype == torch.float32
    np.testing.assert_allclose(seen[0].numpy(), data["model_timesteps"].numpy())


def test_oracle_network_recovers_the_clean_image():
    """With the exact noise as eps_hat, the one-shot formula returns the clean image:
    checks the [0,1] <-> [-1,1] map, x_t's scaling and the x0 coefficients."""
    torch.manual_seed(0)
    abar_all = get_preset("guided-small").alphas_cumprod()
    sigma = 0.3
    x = torch.rand(3, 3, 8, 8) * 0.8 + 0.1
    x_noisy = x + sigma * torch.randn_like(x)
    abar = abar_all[sigma_to_timestep(abar_all, sigma)]

    def oracle(x_t, timesteps):
        eps = (x_t - math.sqrt(abar) * (2 * x - 1)) / math.sqrt(1 - abar)
        return torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)  # + learned-variance channels

    denoised = OneShotDenoiser(oracle, abar_all, sigma)(x_noisy)
    assert torch.allclose(denoised, x, atol=1e-5)


def test_forward_shape_range_and_formula(improved_denoiser):
    denoiser = improved_denoiser
    torch.manual_seed(1)
    x_noisy = torch.rand(5, 3, 32, 32) + 0.25 * torch.randn(5, 3, 32, 32)
    out = denoiser(x_noisy)
    assert out.shape == x_noisy.shape
    assert out.min() >= 0 and out.max() <= 1
    assert denoiser.timestep == 1158
    x_t = math.sqrt(denoiser.abar) * (2 * x_noisy - 1)
    with torch.no_grad():  # as the forward pass runs (same convolution algorithms)
        x0 = denoiser.predict_xstart(x_t, 1158)
    assert torch.allclose(out, (x0 + 1) / 2, atol=1e-6)


def test_chunking_gives_identical_results(improved_denoiser):
    torch.manual_seed(2)
    x_noisy = torch.rand(7, 3, 32, 32)
    whole = improved_denoiser(x_noisy)
    improved_denoiser.chunk_size = 3
    try:
        chunked = improved_denoiser(x_noisy)
    finally:
        improved_denoiser.chunk_size = None
    # Equal up to float32 rounding: oneDNN picks its kernels by batch size (differences
    # of about 1e-6), which the Winograd layers' own rounding spreads to about 1e-5.
    assert torch.allclose(chunked, whole, rtol=0, atol=5e-5)


def test_output_is_an_ordinary_tensor_usable_in_training(improved_denoiser):
    out = improved_denoiser(torch.rand(2, 3, 32, 32))
    assert not out.is_inference() and not out.requires_grad
    classifier = nn.Linear(3 * 32 * 32, 2)
    classifier(out.flatten(1)).sum().backward()
    assert classifier.weight.grad is not None


def test_train_mode_propagates_gradients():
    preset = get_preset("guided-small")
    torch.manual_seed(3)
    denoiser = OneShotDenoiser(preset.build_network(), preset.alphas_cumprod(), 0.25).train()
    x_noisy = torch.rand(2, 3, 32, 32, requires_grad=True)
    denoiser(x_noisy).sum().backward()
    assert x_noisy.grad is not None and x_noisy.grad.abs().sum() > 0


def test_bfloat16_autocast_runs_close_to_float32():
    path = reference_path("improved_small_reference.pt")
    denoiser = OneShotDenoiser.from_pretrained("improved-small", sigma=0.25, checkpoint_path=path)
    x_noisy = torch.rand(2, 3, 32, 32)
    reference_out = denoiser(x_noisy)
    # Same arithmetic as float32 weights under autocast, without a cast on every call.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x_t = math.sqrt(denoiser.abar) * (2 * x_noisy - 1)
        eps_autocast = denoiser.network(x_t, float(denoiser.timestep * denoiser.timestep_scale))
    denoiser.autocast_dtype = torch.bfloat16
    assert denoiser.network.unet.conv_in.weight.dtype == torch.bfloat16
    assert denoiser.network.unet.conv_norm_out.weight.dtype == torch.float32
    out = denoiser(x_noisy)
    assert out.dtype == torch.float32
    assert (out - reference_out).abs().mean() < 0.05
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eps_held = denoiser.network(x_t, float(denoiser.timestep * denoiser.timestep_scale))
    assert torch.equal(eps_held, eps_autocast)
    denoiser.autocast_dtype = None
    assert denoiser.network.unet.conv_in.weight.dtype == torch.float32


def test_fp16_autocast_is_refused_on_a_cpu():
    from denoised_drs.diffusion import check_autocast_device

    check_autocast_device(torch.float16, "cuda")
    check_autocast_device(torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="fp16 autocast on a CPU"):
        check_autocast_device(torch.float16, "cpu")
    with pytest.raises(ValueError, match="autocast dtype"):
        check_autocast_device(torch.float64, "cpu")
    network = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    abar = get_preset("guided-small").alphas_cumprod()
    denoiser = OneShotDenoiser(network, abar, 0.25, autocast_dtype=torch.float16)
    with pytest.raises(ValueError, match="fp16 autocast on a CPU"):
        denoiser(torch.rand(1, 3, 8, 8))


def test_denoiser_takes_any_multiple_of_the_downsampling_factor():
    """224 px through a 256-px model, in miniature: 48 px through a 32-px model (x4)."""
    preset = get_preset("guided-small")  # channel_mult 1,2,2: heights and widths x4
    torch.manual_seed(7)
    denoiser = OneShotDenoiser(preset.build_network(), preset.alphas_cumprod(), 0.25)
    assert denoiser.size_multiple == 4
    denoiser.check_image_shape((3, 48, 48))
    out = denoiser(torch.rand(2, 3, 48, 48))
    assert out.shape == (2, 3, 48, 48) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        denoiser.check_image_shape((3, 50, 48))
    with pytest.raises(ValueError, match="multiples of 4"):
        denoiser(torch.rand(1, 3, 50, 48))


def test_bad_inputs(improved_denoiser):
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        improved_denoiser(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="timesteps"):
        improved_denoiser.predict_xstart(torch.rand(2, 3, 32, 32), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="largest supported sigma"):
        OneShotDenoiser(nn.Identity(), get_preset("guided-small").alphas_cumprod(), 200.0)
    with pytest.raises(ValueError, match="chunk_size"):
        OneShotDenoiser(
            nn.Identity(), get_preset("guided-small").alphas_cumprod(), 0.25, chunk_size=0
        )


# ---------------------------------------------------------------------------------
# Loading


def test_checkpoint_with_wrong_keys_gives_a_clear_message(tmp_path):
    state_dict = torch.load(
        reference_path("improved_small_reference.pt"), map_location="cpu", weights_only=True
    )["state_dict"]
    state_dict = {("module." + k if k.startswith("out.") else k): v for k, v in state_dict.items()}
    path = tmp_path / "renamed.pt"
    torch.save(state_dict, path)
    with pytest.raises(ValueError) as error:
        load_denoiser_network("improved-small", path)
    message = str(error.value)
    assert "'improved-small'" in message
    assert "first 'out.0.weight'" in message and "first 'module.out.0.weight'" in message
    assert len(message) < 500  # a summary, not a dump of every key


def test_checkpoint_for_another_preset_names_the_expected_one():
    with pytest.raises(
        ValueError, match=r"'cifar10-uncond-50M' \(expected cifar10_uncond_50M_500K.pt\)"
    ):
        load_denoiser_network("cifar10-uncond-50M", reference_path("improved_small_reference.pt"))


def test_missing_or_unknown_sources(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_denoiser_network("cifar10-uncond-50M", missing)
    with pytest.raises(ValueError, match="needs a checkpoint file"):
        load_denoiser_network("imagenet256-uncond")
    with pytest.raises(ValueError, match="unknown denoiser 'cifar10'"):
        load_denoiser_network("cifar10")
    with pytest.raises(FileNotFoundError, match="not a diffusers denoiser directory"):
        load_denoiser_network(tmp_path)
    not_a_state_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_state_dict)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_denoiser_network("improved-small", not_a_state_dict)


def _tiny_diffusers_parts():
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(4)
    unet = UNet2DModel(
        sample_size=16,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2")
    return unet, scheduler


@pytest.mark.parametrize("layout", ["pipeline", "side_by_side"])
def test_diffusers_directory_loads_offline_and_denoises(tmp_path, layout):
    from diffusers import DDPMPipeline

    unet, scheduler = _tiny_diffusers_parts()
    if layout == "pipeline":
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path)
    else:
        unet.save_pretrained(tmp_path)
        scheduler.save_pretrained(tmp_path)
    loaded = load_denoiser_network(tmp_path)
    np.testing.assert_allclose(loaded.alphas_cumprod, scheduler.alphas_cumprod.numpy())
    assert loaded.prediction_type == "epsilon" and loaded.timestep_scale == 1.0

    sigma = 0.25
    denoiser = OneShotDenoiser.from_pretrained(tmp_path, sigma=sigma, chunk_size=2)
    x_noisy = torch.rand(3, 3, 16, 16) + sigma * torch.randn(3, 3, 16, 16)
    out = denoiser(x_noisy)
    assert out.shape == x_noisy.shape and out.min() >= 0 and out.max() <= 1
    # The same computation by hand with the original diffusers objects.
    t = denoiser.timestep
    abar = scheduler.alphas_cumprod[t].double()
    x_t = abar.sqrt().float() * (2 * x_noisy - 1)
    with torch.no_grad():
        eps = unet(x_t, torch.full((3,), float(t))).sample
    x0 = ((1 / abar).sqrt().float() * x_t - (1 / abar - 1).sqrt().float() * eps).clamp(-1, 1)
    assert torch.allclose(out, (x0 + 1) / 2, atol=1e-5)


def test_diffusers_directory_takes_no_checkpoint(tmp_path):
    unet, scheduler = _tiny_diffusers_parts()
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds its own weights"):
        load_denoiser_network(tmp_path, tmp_path / "weights.pt")


def test_from_pretrained_equals_the_loader_and_constructor(tmp_path):
    """A tiny saved denoiser of ours: from_pretrained gives what the loader + constructor give."""
    from denoised_drs.diffusion import openai_unet
    from denoised_drs.diffusion.checkpoint import save_denoiser_checkpoint

    flags = {"image_size": 16, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1,
             "channel_mult": "1,2", "attention_resolutions": "", "num_head_channels": 32,
             "learn_sigma": False, "use_scale_shift_norm": True, "dropout": 0.0}
    torch.manual_seed(5)
    path = tmp_path / "tiny.pt"
    save_denoiser_checkpoint(path, openai_unet(**flags), flags, "cosine", 1000)
    loaded = load_denoiser_network(path)
    by_hand = OneShotDenoiser(
        loaded.network, loaded.alphas_cumprod, 0.25,
        timestep_scale=loaded.timestep_scale, prediction_type=loaded.prediction_type, chunk_size=2,
    )
    pretrained = OneShotDenoiser.from_pretrained(path, sigma=0.25, chunk_size=2)
    assert pretrained.timestep == by_hand.timestep and pretrained.chunk_size == 2
    np.testing.assert_array_equal(pretrained.alphas_cumprod, by_hand.alphas_cumprod)
    x_noisy = torch.rand(3, 1, 16, 16) + 0.25 * torch.randn(3, 1, 16, 16)
    assert torch.equal(pretrained(x_noisy), by_hand(x_noisy))


def _linear_network(x_t, timesteps):
    # Deterministic and cheap; depends on both arguments.
    return 0.5 * x_t + 1e-3 * timesteps.view(-1, 1, 1, 1)


def test_scheduler_gives_the_same_denoiser_as_its_alphas_cumprod():
    from diffusers import DDIMScheduler, DDPMScheduler

    torch.manual_seed(6)
    x_noisy = torch.rand(4, 3, 8, 8) + 0.3 * torch.randn(4, 3, 8, 8)
    for scheduler in (
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        DDIMScheduler(num_train_timesteps=500),
    ):
        from_scheduler = OneShotDenoiser(_linear_network, scheduler, 0.3)
        from_array = OneShotDenoiser(_linear_network, scheduler.alphas_cumprod, 0.3)
        assert from_scheduler.prediction_type == from_array.prediction_type == "epsilon"
        assert from_scheduler.timestep == from_array.timestep
        np.testing.assert_array_equal(from_scheduler.alphas_cumprod, from_array.alphas_cumprod)
        assert torch.equal(from_scheduler(x_noisy), from_array(x_noisy))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_scheduler_prediction_types_match_diffusers_own_x0(prediction_type):
    """Our x0 estimate equals the ``pred_original_sample`` of diffusers' DDPMScheduler.step."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
    denoiser = OneShotDenoiser(_linear_network, scheduler, 0.25)
    assert denoiser.prediction_type == prediction_type
    torch.manual_seed(7)
    x_t = torch.randn(2, 3, 8, 8)
    t = denoiser.timestep
    ours = denoiser.predict_xstart(x_t, t)
    output = _linear_network(x_t, torch.full((2,), float(t)))
    theirs = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours, theirs.pred_original_sample, rtol=0, atol=1e-5)


def test_v_and_sample_oracles_through_a_scheduler_recover_the_clean_image():
    from diffusers import DDPMScheduler

    torch.manual_seed(8)
    sigma = 0.3
    x = torch.rand(3, 3, 8, 8) * 0.8 + 0.1
    x_noisy = x + sigma * torch.randn_like(x)
    for prediction_type in ("sample", "v_prediction"):
        scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)
        abar_all = scheduler.alphas_cumprod.double().numpy()
        abar = abar_all[sigma_to_timestep(abar_all, sigma)]
        x0 = 2 * x - 1

        def oracle(x_t, timesteps, kind=prediction_type, abar=abar, x0=x0):
            if kind == "sample":
                return x0
            eps = (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
            return math.sqrt(abar) * eps - math.sqrt(1 - abar) * x0

        denoised = OneShotDenoiser(oracle, scheduler, sigma)(x_noisy)
        assert torch.allclose(denoised, x, atol=1e-5)


def test_prediction_type_contradicting_the_scheduler_is_refused():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    agreeing = OneShotDenoiser(_linear_network, scheduler, 0.25, prediction_type="v_prediction")
    assert agreeing.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="contradicts the scheduler's 'v_prediction'"):
        OneShotDenoiser(_linear_network, scheduler, 0.25, prediction_type="epsilon")
