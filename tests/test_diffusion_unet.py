"""The OpenAI UNet on diffusers: official key layout, shapes and reference outputs."""

import json

import pytest
import torch
from reference_data import reference_path

from denoised_drs.diffusion.unet import OpenAIUNet, OpenAIUNetConfig, openai_unet
from denoised_drs.state_dicts import StateDictMismatchError


@pytest.fixture(scope="module", params=["improved", "guided"])
def small_reference(request):
    path = reference_path(f"{request.param}_small_reference.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(
    "manifest", ["cifar10_uncond_50M_500K.keys.json", "256x256_diffusion_uncond.keys.json"]
)
def test_full_size_manifest_loads_strictly(manifest):
    """Every official key and shape, nothing missing, nothing unexpected, on meta tensors."""
    data = json.loads(reference_path(manifest).read_text())
    with torch.device("meta"):  # the 552M model takes neither memory nor init time
        model = OpenAIUNet(OpenAIUNetConfig.from_flags(**data["flags"]))
    expected = {key: tuple(shape) for key, shape in data["state_dict"].items()}
    assert model.openai_state_dict_shapes() == expected
    zeros = {key: torch.zeros(shape, device="meta") for key, shape in expected.items()}
    model.load_openai_state_dict(zeros, assign=True)  # strict: raises on any mismatch
    assert sum(p.numel() for p in model.parameters()) == data["num_parameters"]
    assert all(p.is_meta for p in model.parameters())


def test_reference_model_output(small_reference):
    ref = small_reference
    model = openai_unet(ref["state_dict"], **ref["flags"])
    assert not model.training
    with torch.no_grad():
        output = model(ref["x_t"], ref["model_timesteps"])
    assert output.shape == ref["model_output"].shape == (2, 6, 32, 32)
    assert (output - ref["model_output"]).abs().max() < 1e-4


def test_attention_head_layout_matters(small_reference):
    """Reading the legacy per-head qkv layout as (3, heads, C/heads) changes the output,
    so the reference comparison above really checks the head split."""
    ref = small_reference
    model = openai_unet(ref["state_dict"], **{**ref["flags"], "use_new_attention_order": True})
    with torch.no_grad():
        output = model(ref["x_t"], ref["model_timesteps"])
    assert (output - ref["model_output"]).abs().max() > 1e-2


def test_new_attention_order_reads_its_layout(small_reference):
    ref = small_reference
    model = openai_unet(ref["state_dict"], **ref["flags"])
    reordered = {}
    for key, tensor in ref["state_dict"].items():
        if key.endswith(("qkv.weight", "qkv.bias")):
            channels = tensor.shape[0] // 3
            heads = model.config.heads(channels, decoder=key.startswith("output_blocks"))
            # legacy (heads, 3, C/heads) -> new order (3, heads, C/heads)
            per_head = tensor.reshape(heads, 3, channels // heads, *tensor.shape[1:])
            tensor = per_head.transpose(0, 1).reshape(tensor.shape)
        reordered[key] = tensor
    new_order = openai_unet(reordered, **{**ref["flags"], "use_new_attention_order": True})
    with torch.no_grad():
        expected = model(ref["x_t"], ref["model_timesteps"])
        assert torch.allclose(new_order(ref["x_t"], ref["model_timesteps"]), expected, atol=1e-6)


def test_heads_follow_openai_rules():
    from diffusers.models.attention_processor import Attention

    # improved-diffusion: fixed num_heads; guided: fixed channels per head.
    fixed = openai_unet(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        num_heads=2,
        num_heads_upsample=4,
        channel_mult="1,2,4",
        attention_resolutions="16,8",
    )
    heads = {
        n.split(".")[0]: m.heads for n, m in fixed.unet.named_modules() if isinstance(m, Attention)
    }
    assert heads == {"down_blocks": 2, "mid_block": 2, "up_blocks": 4}
    per_channel = openai_unet(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        num_head_channels=16,
        channel_mult="1,2,4",
        attention_resolutions="16,8",
    )
    for module in per_channel.unet.modules():
        if isinstance(module, Attention):
            assert module.heads == module.to_qkv.in_features // 16
            assert module.scale == pytest.approx(16**-0.5)


def test_flag_forms_and_defaults():
    as_string = OpenAIUNetConfig.from_flags(image_size=32, channel_mult="1,2,2,2")
    as_tuple = OpenAIUNetConfig.from_flags(image_size=32, channel_mult=(1, 2, 2, 2))
    default = OpenAIUNetConfig.from_flags(image_size=32)
    assert as_string == as_tuple == default
    config = OpenAIUNetConfig.from_flags(
        image_size=256, learn_sigma=True, attention_resolutions="32,16,8"
    )
    assert config.channel_mult == (1, 1, 2, 2, 4, 4)
    assert config.attention_ds == (8, 16, 32) and config.out_channels == 6
    assert OpenAIUNetConfig.from_flags(in_channels=1).out_channels == 1


def test_bad_flags_are_rejected():
    with pytest.raises(ValueError, match="unknown OpenAI UNet flag"):
        OpenAIUNetConfig.from_flags(num_chanels=64)
    with pytest.raises(NotImplementedError, match="class_cond"):
        OpenAIUNetConfig.from_flags(class_cond=True)
    with pytest.raises(ValueError, match="no default channel_mult"):
        OpenAIUNetConfig.from_flags(image_size=48)
    with pytest.raises(ValueError, match="heads"):
        OpenAIUNetConfig.from_flags(num_channels=96, num_heads=5)


def test_key_mismatch_names_first_missing_and_unexpected(small_reference):
    ref = small_reference
    state_dict = dict(ref["state_dict"])
    state_dict["module.extra"] = state_dict.pop("input_blocks.0.0.weight")
    with pytest.raises(StateDictMismatchError) as error:
        openai_unet(state_dict, **ref["flags"])
    message = str(error.value)
    assert "1 missing key(s), first 'input_blocks.0.0.weight'" in message
    assert "1 unexpected key(s), first 'module.extra'" in message
    assert isinstance(error.value, ValueError)


def test_shape_mismatch_is_reported(small_reference):
    ref = small_reference
    state_dict = dict(ref["state_dict"])
    state_dict["out.2.bias"] = torch.zeros(3)  # as if learn_sigma were False
    with pytest.raises(
        ValueError, match=r"shape mismatch.*'out.2.bias': \(3,\) in the file, \(6,\)"
    ):
        openai_unet(state_dict, **ref["flags"])


def _miniature(**flags):
    """A small random OpenAI UNet built for 32 px with three levels (downsampling 4),
    as the 256-px ImageNet model is in miniature: 48 px here plays 224 px there."""
    torch.manual_seed(5)
    model = openai_unet(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        channel_mult="1,2,2",
        attention_resolutions="16,8",
        num_head_channels=16,
        learn_sigma=True,
        **flags,
    )
    for param in model.parameters():  # OpenAI zero-initialises some layers: randomise all
        param.data.normal_(0, 0.1).add_(1.0 if param.ndim == 1 and param.numel() > 0 else 0.0)
    return model


def _plain_diffusers_copy(model):
    """The same weights in an unmodified diffusers UNet2DModel: diffusers' own attention
    processor with separate q, k, v, its ResnetBlock2D and GroupNorm, default layout."""
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention

    plain = UNet2DModel.from_config(model.unet.config).eval()
    plain.load_state_dict(model.unet.state_dict(), strict=True)
    for name, module in plain.named_modules():
        if isinstance(module, Attention):
            fast = model.unet.get_submodule(name)
            module.heads, module.scale = fast.heads, fast.scale
    return plain


@pytest.mark.parametrize("size", [(32, 32), (48, 48), (48, 32)])
def test_fast_modules_compute_what_diffusers_computes_at_any_size(size):
    model = _miniature()
    plain = _plain_diffusers_copy(model)
    torch.manual_seed(6)
    x = torch.randn(2, 3, *size)
    t = torch.tensor([10.0, 700.5])
    with torch.no_grad():
        expected = plain(x, t).sample
        output = model(x, t)
    assert output.shape == (2, 6, *size) and output.is_contiguous()
    assert (output - expected).abs().max() < 1e-4
    with torch.enable_grad():  # the autograd path (no in-place ops) agrees too
        assert (model(x, t) - expected).abs().max() < 1e-4


def test_any_multiple_of_the_downsampling_factor_is_accepted():
    model = _miniature()
    assert model.size_multiple == 4 and model.input_shape == (3, 32, 32)
    model.check_image_shape((3, 48, 36))
    for shape, problem in [((3, 46, 48), "multiples of 4"), ((3, 48, 2), "multiples of 4"),
                           ((1, 48, 48), "3 channels")]:
        with pytest.raises(ValueError, match=problem):
            model.check_image_shape(shape)
        with pytest.raises(ValueError, match=problem), torch.no_grad():
            model(torch.zeros(1, *shape), 5.0)


def test_state_dict_keeps_the_separate_qkv_layout():
    """Fused inside, diffusers' to_q / to_k / to_v outside: checkpoints saved before the
    fusion load, and what is saved now loads into an unfused diffusers model."""
    model = _miniature()
    state = model.state_dict()
    assert not any("to_qkv" in key for key in state)
    assert any(key.endswith("to_k.weight") for key in state)
    fresh = _miniature(dropout=0.0)
    for param in fresh.parameters():
        param.data.zero_()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x, 3.0), model(x, 3.0))
