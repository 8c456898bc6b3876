"""The official OpenAI checkpoint layout, converted to our UNet's diffusers layout.

improved-diffusion and guided-diffusion checkpoints name their keys after the OpenAI
``UNetModel`` (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``,
``out``; a fused ``qkv`` 1x1 conv per attention block). :func:`convert_openai_state_dict`
renames them to the keys of :class:`~denoised_drs.diffusion.unet.OpenAIUNet`'s
``UNet2DModel``, splitting each ``qkv`` into ``to_q``, ``to_k``, ``to_v`` (legacy
(heads, 3, C / heads) or new (3, heads, C / heads) order) and dropping the trailing 1
of the 1x1 convolutions that become linear layers; :func:`openai_state_dict_shapes`
lists the keys and shapes an official file must have for a given network.

The network is only read (its config, its state dict's keys and shapes, its attention
head counts), so this module needs nothing of ``unet.py`` at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ..state_dicts import check_state_dict

if TYPE_CHECKING:
    from .unet import OpenAIUNet, OpenAIUNetConfig


def openai_state_dict_shapes(model: OpenAIUNet) -> dict[str, tuple[int, ...]]:
    """Every key of the official layout ``model`` expects, with its shape."""
    return _conversion_plan(model)[1]


def convert_openai_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: OpenAIUNet, context: str = ""
) -> dict[str, torch.Tensor]:
    """Convert an official-layout state dict into ``model.unet``'s diffusers layout.

    Checks first that ``state_dict`` has exactly the keys and shapes ``model`` expects;
    on any mismatch raises :class:`~denoised_drs.state_dicts.StateDictMismatchError`
    naming the first missing, first unexpected and first wrongly shaped key. Works on
    meta tensors too (no data is touched).
    """
    plan, expected = _conversion_plan(model)
    where = f" for {context}" if context else ""
    check_state_dict(state_dict, expected, f"state dict does not fit the OpenAI UNet{where}")
    converted = {}
    for dkey, (okey, part, heads) in plan.items():
        tensor = state_dict[okey]
        if part in ("q", "k", "v"):
            tensor = _split_qkv(
                tensor, "qkv".index(part), heads, model.config.use_new_attention_order
            )
        elif part == "proj":
            tensor = tensor.squeeze(-1) if tensor.ndim == 3 else tensor
        converted[dkey] = tensor.contiguous()
    return converted


# Leaf module names inside each kind of block: diffusers name -> official name.
_RESNET_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_ATTENTION_LEAVES = {
    "group_norm": "norm",
    "to_q": "qkv",
    "to_k": "qkv",
    "to_v": "qkv",
    "to_out.0": "proj_out",
}
_LEAVES = {
    "plain": {"": ""},
    "resnet": _RESNET_LEAVES,
    "attention": _ATTENTION_LEAVES,
    "downsample": {"conv": "op"},
    "upsample": {"conv": "conv"},
}


def _module_pairs(config: OpenAIUNetConfig) -> dict[str, tuple[str, str]]:
    """Map each diffusers module prefix to (official module prefix, block kind)."""
    pairs = {
        "time_embedding.linear_1": ("time_embed.0", "plain"),
        "time_embedding.linear_2": ("time_embed.2", "plain"),
        "conv_in": ("input_blocks.0.0", "plain"),
        "mid_block.resnets.0": ("middle_block.0", "resnet"),
        "mid_block.attentions.0": ("middle_block.1", "attention"),
        "mid_block.resnets.1": ("middle_block.2", "resnet"),
        "conv_norm_out": ("out.0", "plain"),
        "conv_out": ("out.2", "plain"),
    }
    sampler = "resnet" if config.resblock_updown else None
    num_levels = len(config.channel_mult)
    index = 1  # input_blocks.0 is conv_in
    for level, attention in enumerate(config.attention_levels):
        for i in range(config.num_res_blocks):
            pairs[f"down_blocks.{level}.resnets.{i}"] = (f"input_blocks.{index}.0", "resnet")
            if attention:
                pairs[f"down_blocks.{level}.attentions.{i}"] = (
                    f"input_blocks.{index}.1",
                    "attention",
                )
            index += 1
        if level != num_levels - 1:
            pairs[f"down_blocks.{level}.downsamplers.0"] = (
                f"input_blocks.{index}.0",
                sampler or "downsample",
            )
            index += 1
    index = 0
    for block, level in enumerate(reversed(range(num_levels))):
        attention = config.attention_levels[level]
        for i in range(config.num_res_blocks + 1):
            pairs[f"up_blocks.{block}.resnets.{i}"] = (f"output_blocks.{index}.0", "resnet")
            if attention:
                pairs[f"up_blocks.{block}.attentions.{i}"] = (
                    f"output_blocks.{index}.1",
                    "attention",
                )
            if level and i == config.num_res_blocks:
                pairs[f"up_blocks.{block}.upsamplers.0"] = (
                    f"output_blocks.{index}.{2 if attention else 1}",
                    sampler or "upsample",
                )
            index += 1
    return pairs


def _conversion_plan(
    model: OpenAIUNet,
) -> tuple[dict[str, tuple[str, str | None, int]], dict[str, tuple[int, ...]]]:
    """For each diffusers key: (official key, which part of it, attention heads);
    and the official key -> shape table the model expects."""
    pairs = _module_pairs(model.config)
    plan: dict[str, tuple[str, str | None, int]] = {}
    expected: dict[str, tuple[int, ...]] = {}
    for dkey, tensor in model.unet.state_dict().items():
        parts = dkey.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in pairs:
                break
        else:
            raise RuntimeError(f"no official name for diffusers key {dkey}")  # a bug here
        official_prefix, kind = pairs[prefix]
        leaf, param = ".".join(parts[cut:-1]), parts[-1]
        official_leaf = _LEAVES[kind][leaf]
        okey = ".".join(p for p in (official_prefix, official_leaf, param) if p)
        shape = tuple(tensor.shape)
        part, heads = None, 0
        if official_leaf == "qkv":
            part = leaf[-1]  # to_q / to_k / to_v
            heads = model.unet.get_submodule(prefix).heads
            shape = (3 * shape[0], *shape[1:], 1) if param == "weight" else (3 * shape[0],)
        elif official_leaf == "proj_out":
            part = "proj"
            shape = (*shape, 1) if param == "weight" else shape
        plan[dkey] = (okey, part, heads)
        expected[okey] = shape
    return plan, expected


def _split_qkv(tensor: torch.Tensor, index: int, heads: int, new_order: bool) -> torch.Tensor:
    """Take q (0), k (1) or v (2) out of a fused qkv weight (3C, C, 1) or bias (3C,)."""
    channels = tensor.shape[0] // 3
    rest = tensor.shape[1:]
    if new_order:  # (3, heads, C / heads): q, k, v first, then heads
        part = tensor.reshape(3, channels, *rest)[index]
    else:  # legacy (heads, 3, C / heads): heads first, then q, k, v within each head
        part = tensor.reshape(heads, 3, channels // heads, *rest)[:, index]
    part = part.reshape(channels, *rest)
    return part.squeeze(-1) if part.ndim == 3 else part
