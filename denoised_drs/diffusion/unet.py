"""The OpenAI diffusion UNet (improved-diffusion / guided-diffusion), built on diffusers.

:func:`openai_unet` builds, from the OpenAI script flags, a diffusers ``UNet2DModel``
that computes exactly what the OpenAI ``UNetModel`` computes, and loads state dicts in
the official key layout (``time_embed``, ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``) through
:func:`~denoised_drs.diffusion.openai_checkpoint.convert_openai_state_dict`.

How the two architectures line up (checked against the reference outputs of the
original code, see ``tests/test_diffusion_unet.py``):

* timestep embedding: OpenAI's ``cat[cos, sin]`` with frequencies
  ``exp(-ln(10000) i / half)`` is diffusers' ``Timesteps(flip_sin_to_cos=True,
  freq_shift=0)``; timesteps may be fractional (improved-diffusion feeds t * 1000 / T).
* ``ResBlock`` -> ``ResnetBlock2D`` (``use_scale_shift_norm`` -> ``"scale_shift"``,
  GroupNorm(32, eps=1e-5)); ``resblock_updown`` -> ResnetBlock2D(down/up=True), which
  like OpenAI average-pools / nearest-upsamples between the first norm and conv.
* ``Downsample``: conv 3x3, stride 2, padding 1; ``Upsample``: nearest x2, conv 3x3.
* ``AttentionBlock`` -> diffusers ``Attention`` with group norm and residual. OpenAI's
  fused ``qkv`` 1x1 conv is laid out per head ((heads, 3, C / heads) along the output
  axis, the "legacy" order) or, with ``use_new_attention_order``, as (3, heads, C / heads);
  it is split into ``to_q``, ``to_k``, ``to_v`` accordingly. The head count follows
  OpenAI (``num_head_channels`` if set, else ``num_heads``; ``num_heads_upsample`` in
  the decoder) and is set on every ``Attention`` module after construction, because
  ``UNet2DModel`` has a single head dimension for all levels.
* the mid-block attention keeps its GroupNorm only with ``attn_norm_num_groups=32``.

For speed (same arithmetic, fewer passes over memory; measured by
``benchmarks/bench_unet.py`` against the original code):

* each attention block holds one fused ``to_qkv`` projection, laid out (3, heads,
  C / heads) as diffusers' ``fuse_projections`` does, and runs
  ``F.scaled_dot_product_attention`` (also on CPUs, where it beats an explicit softmax
  at the 16x16 level); its ``state_dict`` still shows diffusers' ``to_q``, ``to_k``,
  ``to_v`` and loading accepts them, so checkpoints keep the standard layout;
* group norms accumulate in float32 (as OpenAI's ``GroupNorm32``) and return the
  input's dtype: float32 inputs run exactly OpenAI's arithmetic; bf16 inputs on CPUs
  are read and written in their own dtype by PyTorch's native kernel, outside
  autocast, with no float32 copy (on CUDA, a float32 round trip that a compiled step
  fuses, :class:`Float32GroupNorm`); the SiLU after a
  residual block's norms then runs in place on that bf16 output, and ``torch.compile``
  fuses norm, casts and SiLU into one kernel;
* residual blocks run diffusers' ``ResnetBlock2D`` arithmetic with the scale-shift as
  one ``addcmul`` and, without autograd, SiLU and the residual add in place;
* activations are channels-last (oneDNN's native layout on CPUs, tensor-core friendly
  on GPUs); the output is returned in the default layout.

The network is fully convolutional: it takes any height and width that are multiples
of its downsampling factor ``2 ** (levels - 1)`` (:attr:`DiffusersUNet.size_multiple`),
not only the size it was trained at.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .openai_checkpoint import convert_openai_state_dict, openai_state_dict_shapes
from .winograd import use_winograd

# OpenAI defaults (guided-diffusion ``model_and_diffusion_defaults``; improved-diffusion
# agrees on every flag it has).
_DEFAULT_FLAGS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "channel_mult": "",
    "learn_sigma": False,
    "attention_resolutions": "16,8",
    "num_heads": 4,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_new_attention_order": False,
    "dropout": 0.0,
    "class_cond": False,
    "in_channels": 3,
}

# Flags of the OpenAI scripts that configure the diffusion process or the training
# run, not the network's layers: accepted and ignored so that a checkpoint's full flag
# set can be passed through unchanged.
_NON_ARCHITECTURE_FLAGS = frozenset(
    {
        "diffusion_steps",
        "noise_schedule",
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "sigma_small",
        "use_checkpoint",
        "use_fp16",
    }
)

# OpenAI's channel_mult defaults by image size (the union of both repositories).
_DEFAULT_CHANNEL_MULT = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}

_NORM_GROUPS = 32
_NORM_EPS = 1e-5


@dataclass(frozen=True)
class OpenAIUNetConfig:
    """The architecture of an OpenAI UNet, parsed from the OpenAI script flags."""

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[int, ...]
    dropout: float
    num_heads: int
    num_head_channels: int
    num_heads_upsample: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    use_new_attention_order: bool

    @classmethod
    def from_flags(cls, **flags: Any) -> OpenAIUNetConfig:
        """Parse OpenAI flags (``num_channels``, ``attention_resolutions="16,8"``, ...).

        Unknown flag names raise ValueError (a typo would otherwise build a different
        network); the diffusion/training flags of the OpenAI scripts are ignored.
        """
        unknown = sorted(set(flags) - set(_DEFAULT_FLAGS) - _NON_ARCHITECTURE_FLAGS)
        if unknown:
            raise ValueError(
                f"unknown OpenAI UNet flag(s) {unknown}; known: {sorted(_DEFAULT_FLAGS)}"
            )
        f = {**_DEFAULT_FLAGS, **flags}
        if f["class_cond"]:
            raise NotImplementedError(
                "class-conditional OpenAI UNets (class_cond=True) are not supported: "
                "one-shot denoising for certification uses the unconditional checkpoints"
            )
        image_size = int(f["image_size"])
        channel_mult = _parse_channel_mult(f["channel_mult"], image_size)
        model_channels = int(f["num_channels"])
        resolutions = _parse_int_list(f["attention_resolutions"], "attention_resolutions")
        attention_ds = tuple(image_size // int(res) for res in resolutions)
        in_channels = int(f["in_channels"])
        num_heads = int(f["num_heads"])
        num_heads_upsample = int(f["num_heads_upsample"])
        config = cls(
            image_size=image_size,
            in_channels=in_channels,
            model_channels=model_channels,
            out_channels=in_channels * (2 if f["learn_sigma"] else 1),
            num_res_blocks=int(f["num_res_blocks"]),
            attention_ds=attention_ds,
            channel_mult=channel_mult,
            dropout=float(f["dropout"]),
            num_heads=num_heads,
            num_head_channels=int(f["num_head_channels"]),
            num_heads_upsample=num_heads if num_heads_upsample == -1 else num_heads_upsample,
            use_scale_shift_norm=bool(f["use_scale_shift_norm"]),
            resblock_updown=bool(f["resblock_updown"]),
            use_new_attention_order=bool(f["use_new_attention_order"]),
        )
        config._validate()
        return config

    @property
    def block_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def attention_levels(self) -> tuple[bool, ...]:
        """Whether each resolution level (downsampling factor 2**level) has attention."""
        return tuple(2**level in self.attention_ds for level in range(len(self.channel_mult)))

    def heads(self, channels: int, decoder: bool) -> int:
        """OpenAI's head count for an attention block with ``channels`` channels."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        return self.num_heads_upsample if decoder else self.num_heads

    def _validate(self) -> None:
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2**{len(self.channel_mult) - 1}"
            )
        for channels in self.block_channels:
            if channels % _NORM_GROUPS:
                raise ValueError(f"{channels} channels do not split into {_NORM_GROUPS} groups")
            for decoder in (False, True):
                heads = self.heads(channels, decoder)
                if heads < 1 or channels % heads:
                    raise ValueError(f"{channels} channels do not split into {heads} heads")


class DiffusersUNet(nn.Module):
    """Adapter: a diffusers ``UNet2DModel`` called as ``model(x_t, timesteps) -> tensor``.

    ``timesteps`` is a scalar or one value per sample, cast to float32 (fractional
    timesteps are fine for the positional embedding). Images may have any height and
    width that are multiples of :attr:`size_multiple`; other sizes raise ValueError.
    A class-conditional ``UNet2DModel`` (one with a class embedding) raises ValueError:
    one-shot denoising takes unconditional models only.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        if getattr(unet, "class_embedding", None) is not None:
            raise ValueError(
                "this UNet2DModel is class-conditional (it has a class embedding): "
                "one-shot denoising takes unconditional models only"
            )
        self.unet = unet.to(memory_format=torch.channels_last)
        use_winograd(self.unet)

    @property
    def size_multiple(self) -> int:
        """Heights and widths must be multiples of this: the total downsampling factor."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless images of ``shape`` (C, H, W) fit the network:
        ``in_channels`` channels, H and W positive multiples of :attr:`size_multiple`."""
        if len(shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(shape)}")
        channels, height, width = (int(v) for v in shape)
        multiple = self.size_multiple
        if channels != self.in_channels:
            raise ValueError(
                f"images of shape {tuple(shape)} do not fit the denoiser: it takes "
                f"{self.in_channels} channels"
            )
        if height < 1 or width < 1 or height % multiple or width % multiple:
            raise ValueError(
                f"images of shape {tuple(shape)} do not fit the denoiser: height and width "
                f"must be multiples of {multiple} (native size {self.input_shape[1:]})"
            )

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images the network was built for."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (self.in_channels, int(height), int(width))

    @property
    def out_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (N, C, H, W), got {tuple(x.shape)}")
        self.check_image_shape(x.shape[1:])
        timesteps = torch.as_tensor(timesteps, dtype=torch.float32, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x, timesteps, return_dict=False)[0].contiguous()


class OpenAIUNet(DiffusersUNet):
    """An OpenAI UNet: ``model(x_t, timesteps) -> (B, out_channels, H, W)``.

    ``timesteps`` are what the OpenAI model itself receives (already rescaled to
    ``t * 1000 / T`` for improved-diffusion models), a scalar or one per sample; they
    may be fractional. The output is the raw network output: the predicted noise in the
    first ``in_channels`` channels, the learned-variance interpolation after it.
    The layers live in ``self.unet`` (a diffusers ``UNet2DModel``), so ``state_dict()``
    is in diffusers layout; load official checkpoints with
    :meth:`load_openai_state_dict`.
    """

    def __init__(self, config: OpenAIUNetConfig) -> None:
        super().__init__(_build_unet2d(config))
        self.config = config

    def openai_state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of the official layout this network expects, with its shape."""
        return openai_state_dict_shapes(self)

    def load_openai_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], assign: bool = False, context: str = ""
    ) -> None:
        """Strictly load a state dict in the official layout.

        Raises :class:`~denoised_drs.state_dicts.StateDictMismatchError` (a ValueError)
        naming the first missing key, the first unexpected key and the first shape
        mismatch (``context``, e.g. the preset, is quoted in the message).
        ``assign=True`` adopts the converted tensors instead of copying them, which lets
        a network built on the meta device be loaded without ever allocating twice.
        """
        converted = convert_openai_state_dict(state_dict, self, context=context)
        self.unet.load_state_dict(converted, strict=True, assign=assign)


def openai_unet(state_dict: Mapping[str, torch.Tensor] | None = None, **flags: Any) -> OpenAIUNet:
    """Build the OpenAI UNet described by ``flags``; load ``state_dict`` if given.

    Flags are the OpenAI script flags (``image_size``, ``num_channels``,
    ``num_res_blocks``, ``channel_mult`` (tuple or ``"1,2,2"``; default per image size),
    ``learn_sigma``, ``attention_resolutions`` (``"16,8"``), ``num_heads``,
    ``num_head_channels``, ``num_heads_upsample``, ``use_scale_shift_norm``,
    ``resblock_updown``, ``use_new_attention_order``, ``dropout``, ``in_channels``);
    the diffusion flags of a checkpoint's flag set may be passed too and are ignored.
    The state dict (official key layout) is loaded strictly. With a state dict the
    network is built on the meta device first, so no memory is spent on a random
    initialisation, and the (float32) tensors of ``state_dict`` become the parameters
    without a copy: do not modify them in place afterwards. The model is returned in
    eval mode (the checkpoints are used for inference; call ``.train()`` to fine-tune).
    """
    config = OpenAIUNetConfig.from_flags(**flags)
    if state_dict is None:
        return OpenAIUNet(config).eval()
    with torch.device("meta"):
        model = OpenAIUNet(config)
    model.load_openai_state_dict(
        {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()},
        assign=True,
    )
    # The adopted tensors come in the default layout; convolutions run channels-last.
    return model.to(memory_format=torch.channels_last).eval()


# ---------------------------------------------------------------------------------
# Construction


def _parse_int_list(value: str | Iterable[int], name: str) -> tuple[int, ...]:
    """The integers of the OpenAI flag ``name`` ("1,2,2" or a sequence); ValueError
    naming the flag otherwise."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    try:
        return tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be comma-separated integers, got {value!r}") from None


def _parse_channel_mult(value: str | Iterable[int], image_size: int) -> tuple[int, ...]:
    mult = _parse_int_list(value, "channel_mult")
    if mult:
        return mult
    if image_size not in _DEFAULT_CHANNEL_MULT:
        raise ValueError(
            f"no default channel_mult for image_size {image_size} (known: "
            f"{sorted(_DEFAULT_CHANNEL_MULT)}); pass channel_mult explicitly"
        )
    return _DEFAULT_CHANNEL_MULT[image_size]


def _build_unet2d(config: OpenAIUNetConfig) -> nn.Module:
    # diffusers takes seconds to import: keep it out of `import denoised_drs`.
    from diffusers import UNet2DModel
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    levels = config.attention_levels
    plain_down = "ResnetDownsampleBlock2D" if config.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if config.resblock_updown else "UpBlock2D"
    updown_type = "resnet" if config.resblock_updown else "conv"
    channels = config.block_channels
    head_dims = {c // config.heads(c, decoder) for c in channels for decoder in (False, True)}
    unet = UNet2DModel(
        sample_size=config.image_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in levels),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(levels)),
        block_out_channels=channels,
        layers_per_block=config.num_res_blocks,
        downsample_padding=1,
        downsample_type=updown_type,
        upsample_type=updown_type,
        dropout=config.dropout,
        act_fn="silu",
        # Recorded in the config when one head size fits all levels; the per-module
        # head counts below are what the forward pass uses either way.
        attention_head_dim=head_dims.pop() if len(head_dims) == 1 else None,
        norm_num_groups=_NORM_GROUPS,
        attn_norm_num_groups=_NORM_GROUPS,
        norm_eps=_NORM_EPS,
        resnet_time_scale_shift="scale_shift" if config.use_scale_shift_norm else "default",
    )
    fast_resnet = _fast_resnet_class()
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            channels = module.to_q.in_features
            heads = config.heads(channels, decoder=name.startswith("up_blocks"))
            module.heads = heads
            module.scale = (channels // heads) ** -0.5
            _fuse_qkv(module)
        elif isinstance(module, ResnetBlock2D):
            if module.output_scale_factor != 1 or module.skip_time_act:
                raise RuntimeError("unexpected ResnetBlock2D settings")  # a bug in the build
            module.__class__ = fast_resnet
        elif type(module) is nn.GroupNorm:
            module.__class__ = Float32GroupNorm
    return unet


# ---------------------------------------------------------------------------------
# Faster modules (same arithmetic as diffusers' and OpenAI's)


class FusedQKVAttnProcessor:
    """Attention processor for an OpenAI attention block with one fused projection.

    Computes ``x + proj_out(attention(qkv(group_norm(x))))`` over the H*W positions of
    ``x`` (N, C, H, W), with ``attn.to_qkv`` (C -> 3C, laid out (3, heads, C / heads))
    and ``F.scaled_dot_product_attention`` at scale ``attn.scale``; in channels-last
    memory the (N, H*W, C) token view costs no copy.
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("the OpenAI attention block is plain self-attention")
        height, width = hidden_states.shape[2:]
        tokens = attn.group_norm(hidden_states).flatten(2).transpose(1, 2)  # (N, T, C)
        qkv = attn.to_qkv(tokens).unflatten(-1, (3, attn.heads, -1))  # (N, T, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, T, d)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = attn.to_out[0](out.transpose(1, 2).flatten(2))  # (N, T, C)
        out = out.transpose(1, 2).unflatten(2, (height, width))  # (N, C, H, W), channels-last
        return out.add_(hidden_states) if not torch.is_grad_enabled() else out + hidden_states


def _fuse_qkv(attn: nn.Module) -> None:
    """Replace ``to_q``, ``to_k``, ``to_v`` by one ``to_qkv``; keep the state-dict layout."""
    channels = attn.to_q.in_features
    like = attn.to_q.weight
    attn.to_qkv = nn.Linear(channels, 3 * channels, device=like.device, dtype=like.dtype)
    del attn.to_q, attn.to_k, attn.to_v
    attn.set_processor(FusedQKVAttnProcessor())
    attn.register_state_dict_post_hook(_split_qkv_entries)
    attn.register_load_state_dict_pre_hook(_fuse_qkv_entries)


def _split_qkv_entries(module: nn.Module, state_dict: dict, prefix: str,
                       local_metadata: Any) -> None:
    for param in ("weight", "bias"):
        fused = state_dict.pop(f"{prefix}to_qkv.{param}")
        for part, tensor in zip("qkv", fused.chunk(3)):
            state_dict[f"{prefix}to_{part}.{param}"] = tensor


def _fuse_qkv_entries(
    module: nn.Module, state_dict: dict, prefix: str, *args: Any
) -> None:
    for param in ("weight", "bias"):
        keys = [f"{prefix}to_{part}.{param}" for part in "qkv"]
        if all(key in state_dict for key in keys):
            state_dict[f"{prefix}to_qkv.{param}"] = torch.cat([state_dict.pop(k) for k in keys])


def _resnet_forward(
    self: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """diffusers' ``ResnetBlock2D.forward`` (output_scale_factor 1, time activation on)
    with fewer passes over memory; in place only where autograd is off."""
    inplace = not torch.is_grad_enabled()
    # SiLU in place on the norm's output (bf16 under autocast, float32 otherwise);
    # compiled, inductor fuses it into the group-norm kernel.
    hidden = F.silu(self.norm1(input_tensor), inplace=inplace)
    if self.upsample is not None:
        input_tensor, hidden = self.upsample(input_tensor), self.upsample(hidden)
    elif self.downsample is not None:
        input_tensor, hidden = self.downsample(input_tensor), self.downsample(hidden)
    hidden = self.conv1(hidden)
    emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]
    if self.time_embedding_norm == "scale_shift":
        scale, shift = emb.chunk(2, dim=1)
        hidden = torch.addcmul(shift, self.norm2(hidden), 1 + scale)
    else:
        hidden = self.norm2(hidden + emb)
    hidden = self.conv2(self.dropout(F.silu(hidden, inplace=inplace)))
    if self.conv_shortcut is not None:
        input_tensor = self.conv_shortcut(input_tensor)
    return hidden.add_(input_tensor) if inplace else hidden + input_tensor


def _native_reduced_precision(x: torch.Tensor) -> bool:
    """Whether a group norm of ``x`` runs PyTorch's native reduced-precision kernel
    (:func:`reduced_precision_group_norm`): bf16 on CPUs (where it is faster than the
    float32 round trip over the 50M UNet and keeps its statistics in float32, see
    :class:`Float32GroupNorm`). Anything else takes the float32 round trip: on CUDA the
    native kernel stores the mean and 1/std in the input's dtype before normalising
    (PyTorch before pytorch/pytorch#183946), which rounds the statistics to bf16; and a
    compiled step fuses the round trip's casts into the norm (and SiLU) anyway."""
    return x.device.type == "cpu" and x.dtype == torch.bfloat16


def reduced_precision_group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``F.group_norm`` on a bf16/fp16 ``x`` read and written in its own dtype.

    PyTorch's native group-norm kernels accumulate reduced-precision inputs in float32
    ("opmath"), so no float32 copy of ``x`` is materialised; the CPU kernel also keeps
    the statistics in float32 and rounds only the output (CUDA's rounds the statistics
    to the input's dtype, which is why :func:`_native_reduced_precision` keeps CUDA off
    this path). Autocast is disabled for this one
    call: its CUDA policy would cast the input to float32 (a separate pass each way).
    ``weight`` and ``bias`` are cast to ``x.dtype`` (a few hundred values).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.group_norm(
            x,
            num_groups,
            None if weight is None else weight.to(x.dtype),
            None if bias is None else bias.to(x.dtype),
            eps,
        )


class Float32GroupNorm(nn.GroupNorm):
    """GroupNorm accumulated in float32 and returned in the input's dtype, as OpenAI's
    ``GroupNorm32`` does.

    * float32 input: plain ``nn.GroupNorm``, OpenAI's arithmetic exactly.
    * bf16 on CPUs (:func:`_native_reduced_precision`):
      :func:`reduced_precision_group_norm`, which reads and writes the reduced dtype and
      accumulates in float32, instead of a float32 copy cast back afterwards.
    * anything else, CUDA included: computed on a float32 copy and cast back. On CUDA
      the engine's step is compiled by default, and inductor fuses the casts, the norm
      and the SiLU after it into one kernel reading and writing bf16 (the two extra
      passes of eager bf16 were 31 percent of the 50M UNet's traffic outside the
      matmuls, issue 24); eagerly, CUDA's native bf16 kernel would round the
      statistics to bf16 (see :func:`_native_reduced_precision`).

    On CPUs the native bf16 kernel used to be kept off as slower than the float32 round
    trip; measured again (PyTorch 2.14, 2 threads, this project's 2-core CPU, the group
    norms of one 50M UNet call at their 11 shapes, in the layouts the UNet passes)
    it wins overall: batch 64, 355 ms native against 585 ms (1 thread: 599 against
    856 ms); batch 16, 80 against 76 ms, a tie. Per shape it depends: at
    (64, 256, 16, 16) 11.5 against 6.4 ms, at (64, 128, 32, 32) 2.4 against 18.6 ms.
    On CPUs both round the float32 result once, so with bf16-exact weights and biases
    (ones and zeros at initialisation) the outputs are the same bits.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native_reduced_precision(x):
            return reduced_precision_group_norm(
                x, self.num_groups, self.weight, self.bias, self.eps
            )
        return super().forward(x.float()).to(x.dtype)


@functools.cache
def _fast_resnet_class() -> type:
    from diffusers.models.resnet import ResnetBlock2D

    return type("FastResnetBlock2D", (ResnetBlock2D,), {"forward": _resnet_forward})
