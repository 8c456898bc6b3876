"""Other OpenAI denoisers: the ImageNet-64 preset, ``--denoiser-config`` flags files,
class-conditional checkpoints refused, and the noise level a matched timestep carries."""

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DENOISER_FLAGS
from module_files import load_module
from reference_data import reference_path

from denoised_drs.cli import run_script
from denoised_drs.diffusion import (
    OneShotDenoiser,
    alphas_cumprod,
    beta_schedule,
    get_preset,
    load_denoiser_network,
    openai_unet,
    read_denoiser_config,
    sigma_to_timestep,
    timestep_noise_level,
)
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig

# A 3-channel improved-diffusion style network: attention at 8 px, learned sigma.
FLAGS = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
         "attention_resolutions": "8", "num_heads": 2, "learn_sigma": True, "dropout": 0.0}
SCHEDULE = {"diffusion_steps": 4000, "noise_schedule": "cosine", "rescale_timesteps": True}
SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py")


def run_certify(args) -> tuple[int, str]:
    """The certify script run in this process as the command line runs it: (status, stderr)."""
    main = load_module(SCRIPT, "certify_diffusion_flags").main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as stop:
            run_script(lambda: main(args), SCRIPT)
    return stop.value.code, err.getvalue()


def official_state_dict(flags, seed=0, scale=0.05):
    """Seeded random weights under the official OpenAI key names and shapes of ``flags``."""
    with torch.device("meta"):
        shapes = openai_unet(**flags).openai_state_dict_shapes()
    generator = torch.Generator().manual_seed(seed)
    return {key: scale * torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def write_json(path, values):
    path.write_text(json.dumps(values))
    return path


@pytest.fixture(scope="module")
def flags_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    checkpoint = root / "model.pt"
    torch.save(official_state_dict(FLAGS), checkpoint)
    return write_json(root / "flags.json", {**FLAGS, **SCHEDULE}), checkpoint


def openai_parameter_count(image_size, num_channels, num_res_blocks, channel_mult,
                           attention_resolutions, out_channels=6):
    """The parameters of OpenAI's UNetModel (scale-shift norm), counted layer by layer
    from its definition, independently of our conversion code."""
    emb = 4 * num_channels
    attention_ds = {image_size // r for r in attention_resolutions}

    def res(c_in, c_out):
        skip = c_in * c_out + c_out if c_in != c_out else 0
        return (2 * c_in + 9 * c_in * c_out + c_out + emb * 2 * c_out + 2 * c_out
                + 2 * c_out + 9 * c_out * c_out + c_out + skip)

    def attention(c):
        return 2 * c + 3 * c * c + 3 * c + c * c + c

    def conv(c_in, c_out):
        return 9 * c_in * c_out + c_out

    total = num_channels * emb + emb + emb * emb + emb + conv(3, num_channels)
    skips, ch, ds = [num_channels], num_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            total += res(ch, mult * num_channels)
            ch = mult * num_channels
            total += attention(ch) if ds in attention_ds else 0
            skips.append(ch)
        if level != len(channel_mult) - 1:
            total += conv(ch, ch)
            skips.append(ch)
            ds *= 2
    total += 2 * res(ch, ch) + attention(ch)
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            total += res(ch + skips.pop(), mult * num_channels)
            ch = mult * num_channels
            total += attention(ch) if ds in attention_ds else 0
            if level and i == num_res_blocks:
                total += conv(ch, ch)
                ds //= 2
    return total + 2 * ch + conv(ch, out_channels)


def test_imagenet64_preset_is_improved_diffusions_network():
    # The counting recipe reproduces the official CIFAR-10 file's parameter count ...
    manifest = json.loads(reference_path("cifar10_uncond_50M_500K.keys.json").read_text())
    assert openai_parameter_count(32, 128, 3, (1, 2, 2, 2), (16, 8)) == manifest["num_parameters"]
    # ... and gives 121.1M for improved-diffusion's ImageNet-64 flags (the file name's
    # "100M" is as loose as the CIFAR-10 file's "50M" for 52.5M).
    expected = openai_parameter_count(64, 128, 3, (1, 2, 3, 4), (16, 8))
    assert expected == 121_063_942
    preset = get_preset("imagenet64-uncond")
    with torch.device("meta"):
        network = preset.build_network()
    assert sum(p.numel() for p in network.parameters()) == expected
    assert sum(math.prod(s) for s in network.openai_state_dict_shapes().values()) == expected
    assert network.input_shape == (3, 64, 64) and network.out_channels == 6
    assert (preset.schedule, preset.num_timesteps, preset.timestep_scale) == ("cosine", 4000, 0.25)
    assert preset.checkpoint == "imagenet64_uncond_100M_1500K.pt"


def test_a_flags_file_loads_its_checkpoint_and_denoises(flags_and_checkpoint):
    flags_path, checkpoint = flags_and_checkpoint
    sigma = 0.25
    loaded = load_denoiser_network(read_denoiser_config(flags_path), checkpoint)
    assert loaded.timestep_scale == 0.25 and loaded.prediction_type == "epsilon"
    denoiser = OneShotDenoiser.from_pretrained(
        read_denoiser_config(flags_path), sigma=sigma, checkpoint_path=checkpoint
    )
    # The same computation from the weights, the flags and the schedule by hand.
    abar = alphas_cumprod(beta_schedule("cosine", 4000))
    by_hand = OneShotDenoiser(openai_unet(official_state_dict(FLAGS), **FLAGS), abar, sigma,
                              timestep_scale=1000 / 4000)
    assert denoiser.timestep == by_hand.timestep == sigma_to_timestep(abar, sigma)
    torch.manual_seed(0)
    x_noisy = torch.rand(2, 3, 16, 16) + sigma * torch.randn(2, 3, 16, 16)
    out = denoiser(x_noisy)
    assert out.shape == x_noisy.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out, by_hand(x_noisy), atol=1e-6)
    # rescale_timesteps is read, not assumed: the guided-diffusion convention differs.
    unscaled = write_json(flags_path.with_name("unscaled.json"),
                          {**FLAGS, **SCHEDULE, "rescale_timesteps": False})
    other = OneShotDenoiser.from_pretrained(read_denoiser_config(unscaled), sigma=sigma,
                                            checkpoint_path=checkpoint)
    assert other.timestep_scale == 1.0 and not torch.allclose(other(x_noisy), out, atol=1e-3)


def test_predict_xstart_networks_predict_the_clean_image(tmp_path):
    flags = {**FLAGS, "learn_sigma": False}
    checkpoint = tmp_path / "model.pt"
    torch.save(official_state_dict(flags), checkpoint)
    path = write_json(tmp_path / "flags.json", {**flags, **SCHEDULE, "predict_xstart": True})
    assert load_denoiser_network(read_denoiser_config(path), checkpoint).prediction_type == "sample"


def test_pipeline_and_script_take_a_flags_file(flags_and_checkpoint, tiny_checkpoints, tmp_path):
    flags_path, checkpoint = flags_and_checkpoint

    class Classifier(torch.nn.Module):
        num_classes = 3

        def forward(self, x):
            return x.mean(dim=(2, 3))

    pipe = Pipeline(mode="rs", classifier=Classifier(), denoiser_config=str(flags_path),
                    denoiser_checkpoint=str(checkpoint), sigma=0.25, n0=4, n=8, batch=8,
                    device="cpu")
    assert pipe.config.denoiser == str(flags_path) and pipe.config.certificate == "rs"
    assert pipe.denoiser.timestep_scale == 0.25
    assert pipe.certify(torch.rand(1, 3, 16, 16), [0])[0].n_used == 8

    # The command line, on the bundled 1-channel 28-px sample.
    tiny_flags = write_json(tmp_path / "tiny.json", {**TINY_DENOISER_FLAGS, **SCHEDULE})
    tiny_checkpoint = tmp_path / "tiny.pt"
    torch.save(official_state_dict(TINY_DENOISER_FLAGS), tiny_checkpoint)

    def args(flags_file, out):
        return ["--dataset", "sample", "--max", "1", "--mode", "rs", "--classifier",
                tiny_checkpoints["full"], "--denoiser-config", str(flags_file),
                "--denoiser-checkpoint", str(tiny_checkpoint), "--sigma", "0.25", "--N0", "4",
                "--N", "8", "--batch", "8", "--device", "cpu", "--outfile", str(out)]

    status, err = run_certify(args(tiny_flags, tmp_path / "out.tsv"))
    assert status == 0, err
    saved = json.loads((tmp_path / "out.tsv.config.json").read_text())
    assert saved["denoiser_config"] == saved["denoiser"] == str(tiny_flags)
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 2

    broken = write_json(tmp_path / "broken.json", {**TINY_DENOISER_FLAGS, **SCHEDULE,
                                                   "num_channels": "32"})
    status, err = run_certify(args(broken, tmp_path / "b.tsv"))
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert "broken.json" in lines[0] and "num_channels must be an integer" in lines[0]
    assert not (tmp_path / "b.tsv").exists()


BAD_CONFIGS = {
    "unknown key": ({"num_channel": 32}, "unknown key(s) ['num_channel']"),
    "string for an integer": ({"num_channels": "32"}, "num_channels must be an integer"),
    "number for a boolean": ({"learn_sigma": 1}, "learn_sigma must be true or false"),
    "float for an integer": ({"num_res_blocks": 1.0}, "num_res_blocks must be an integer"),
    "zero channels": ({"num_channels": 0}, "num_channels must be positive"),
    "bad channel_mult": ({"channel_mult": "1,x"}, "channel_mult must be positive integers"),
    "dropout of 1.5": ({"dropout": 1.5}, "dropout must be a number in [0, 1)"),
    "unknown schedule": ({"noise_schedule": "sigmoid"}, "noise_schedule must be one of"),
    "class-conditional": ({"class_cond": True}, "unconditional models only"),
    "heads that do not split": ({"num_heads": 3}, "do not split into 3 heads"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_flags_files_are_refused_in_one_line(tmp_path, case):
    change, message = BAD_CONFIGS[case]
    path = write_json(tmp_path / "flags.json", {**FLAGS, **SCHEDULE, **change})
    with pytest.raises(ValueError) as error:
        read_denoiser_config(path)
    text = str(error.value)
    assert "\n" not in text and str(path) in text and message in text


def test_flags_files_must_give_the_schedule_and_be_json_objects(tmp_path):
    for missing in SCHEDULE:
        values = {k: v for k, v in {**FLAGS, **SCHEDULE}.items() if k != missing}
        with pytest.raises(ValueError, match=f"missing \\['{missing}'\\]"):
            read_denoiser_config(write_json(tmp_path / "flags.json", values))
    with pytest.raises(ValueError, match="must hold a JSON object"):
        read_denoiser_config(write_json(tmp_path / "list.json", [1, 2]))
    (tmp_path / "broken.json").write_text('{"image_size": ')
    with pytest.raises(ValueError, match="cannot parse denoiser config"):
        read_denoiser_config(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="denoiser config not found"):
        read_denoiser_config(tmp_path / "none.json")


def test_denoiser_config_settings_are_checked():
    base = {"mode": "rs", "classifier": "c.pt"}
    with pytest.raises(ValueError, match="give denoiser_checkpoint"):
        PipelineConfig(**base, denoiser_config="flags.json")
    with pytest.raises(ValueError, match="takes the place of a denoiser"):
        PipelineConfig(**base, denoiser="cifar10-uncond-50M", denoiser_config="flags.json",
                       denoiser_checkpoint="m.pt")
    with pytest.raises(ValueError, match="denoiser_config must be a string"):
        PipelineConfig(**base, denoiser_config=3, denoiser_checkpoint="m.pt")


def test_class_conditional_checkpoints_are_refused(tmp_path, flags_and_checkpoint):
    flags_path, _ = flags_and_checkpoint
    state_dict = official_state_dict(FLAGS)
    state_dict["label_emb.weight"] = torch.zeros(1000, 128)
    path = tmp_path / "cond.pt"
    torch.save(state_dict, path)
    for source in (read_denoiser_config(flags_path), "improved-small"):
        with pytest.raises(ValueError, match=f"{path} is a class-conditional checkpoint.*"
                           "unconditional models only"):
            load_denoiser_network(source, path)


def test_class_conditional_diffusers_folders_are_refused(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    UNet2DModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=10,
                ).save_pretrained(tmp_path)
    DDPMScheduler().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unconditional models only"):
        load_denoiser_network(tmp_path)


# Carlini et al.'s (and DRS's) code adds the noise by q_sample at the matched timestep t*,
# so the images are smoothed at sqrt((1 - abar_t*) / abar_t*) / 2, not at sigma.
@pytest.mark.parametrize("preset", ["cifar10-uncond-50M", "imagenet64-uncond",
                                    "imagenet256-uncond"])
def test_the_matched_timestep_carries_at_most_one_percent_more_noise(preset):
    abar = get_preset(preset).alphas_cumprod()
    for sigma in (0.12, 0.18, 0.25, 0.36, 0.50, 1.00):
        t = sigma_to_timestep(abar, sigma)
        level = timestep_noise_level(abar, t)
        assert sigma <= level <= 1.01 * sigma
        assert timestep_noise_level(abar, t - 1) < sigma  # the first one that reaches sigma
    with pytest.raises(ValueError, match="integer timestep"):
        timestep_noise_level(abar, abar.size)


def test_noise_levels_at_carlinis_timesteps():
    cifar = get_preset("cifar10-uncond-50M").alphas_cumprod()
    imagenet = get_preset("imagenet256-uncond").alphas_cumprod()
    levels = [timestep_noise_level(cifar, t) for t in (1158, 1984, 2809)]
    levels += [timestep_noise_level(imagenet, t) for t in (145, 259, 396)]
    np.testing.assert_allclose(levels, [0.250119, 0.500312, 1.000014,
                                        0.251581, 0.502392, 1.000241], atol=1e-6)
