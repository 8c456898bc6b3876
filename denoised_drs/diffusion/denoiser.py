"""One-shot diffusion denoising (Carlini et al. 2023, "(Certified!!) Adversarial
Robustness for Free!").

An image in [0, 1] carrying Gaussian pixel noise of std ``sigma`` is, after mapping to
[-1, 1] (noise std ``2 sigma``) and scaling by ``sqrt(abar_t)``, distributed like the
diffusion state ``x_t`` at the timestep ``t`` whose noise level matches
(:func:`~denoised_drs.diffusion.schedule.sigma_to_timestep`; the match is to the first
timestep at least as noisy). One call of the noise-prediction network then gives the
estimate of the clean image

    x0_hat = clip(sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps_hat, -1, 1)

(or the like for networks predicting x0 or v). abar_t and what the network predicts
come from the caller or from a diffusers scheduler (``DDPMScheduler``, ...).

The denoiser adds no noise of its own and knows nothing about certificates: the caller
adds the noise (once, with the sigma of its certificate) and decides what the output
may be used for.

:func:`checked_denoiser` vets any other module offered as a denoiser: one that needs
more than the noisy images (a bare diffusion network, e.g. a diffusers ``UNet2DModel``,
which takes a timestep and does not know its schedule) is refused, any other is held
to mapping images to images of the same shape.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ..errors import first_line
from .loading import PREDICTION_TYPES, load_denoiser_network
from .presets import DenoiserPreset
from .schedule import sigma_to_timestep
from .unet import DiffusersUNet
from .winograd import is_compiling

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
# The layers whose weights torch.autocast casts to the autocast dtype on every call.
_AUTOCAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_autocast_device(dtype: torch.dtype | None, device: torch.device | str) -> None:
    """Raise ValueError for an autocast dtype that ``device`` runs badly or not at all.

    float16 on a CPU is refused: it runs about 50x slower than float32 there (bfloat16 is
    the CPU's fast reduced precision). None (float32), bfloat16 and, off the CPU,
    float16 pass.
    """
    _check_autocast_dtype(dtype)
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        raise ValueError(
            "fp16 autocast on a CPU runs about 50x slower than float32: use bf16 or no autocast"
        )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls and convolutions natively (AVX-512 BF16 or
    AMX, as oneDNN reports it); True when torch cannot tell. Elsewhere bf16 is emulated:
    on this project's AVX2 CPU a bf16 step ran 6x (bundled UNet) to 12x (bundled
    classifier) slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def _check_autocast_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and dtype not in AUTOCAST_DTYPES:
        raise ValueError(
            f"autocast dtype must be torch.bfloat16, torch.float16 or None, got {dtype}"
        )


class OneShotDenoiser(nn.Module):
    """Denoise noisy images in [0, 1] with one call of a diffusion network.

    Args:
        network: called as ``network(x_t, timesteps) -> (N, C_out, H, W)``; its first C
            output channels (C = input channels) are the prediction, further channels
            (learned variance) are dropped. A diffusers ``UNet2DModel`` (which returns a
            ``UNet2DOutput``) is wrapped in
            :class:`~denoised_drs.diffusion.unet.DiffusersUNet`, which converts it in
            place as the diffusers-folder loader does (channels-last weights, Winograd
            convolutions on CPUs where they pay: float rounding only); a
            class-conditional one is refused.
        schedule: abar_t for t = 0 .. T-1 (OpenAI indexing), or a diffusers scheduler
            (``DDPMScheduler``, ``DDIMScheduler``, ...) that then supplies both abar_t
            (its ``alphas_cumprod``) and the prediction type (its
            ``config.prediction_type``). Only those two are read from a scheduler: the
            estimate is always clipped to [-1, 1], whatever its ``clip_sample`` says.
        sigma: the pixel-space noise std the inputs carry (images in [0, 1]).
        timestep_scale: the network is called with ``t * timestep_scale`` as a float
            (``1000 / T`` for improved-diffusion's rescaled timesteps).
        prediction_type: what the network predicts: "epsilon" (the OpenAI models),
            "sample" (x0) or "v_prediction". None means the scheduler's, or "epsilon"
            for an array of abar_t; one that contradicts the scheduler is refused.
        chunk_size: at most this many images per network call (bounds peak memory);
            None sends the whole batch at once. Results agree to float32 rounding
            (about 1e-5), not bit for bit: oneDNN's kernels depend on the batch size.
        autocast_dtype: None computes in float32; torch.bfloat16 / torch.float16 run the
            network under ``torch.autocast``. Setting it (here or later through the
            attribute) converts, in place and once, the weights of the network's linear
            and convolution layers (the ones autocast would cast on every call) to that
            dtype; the results are the same as with float32 weights under autocast.
            Setting it back to None converts them back to float32, keeping the rounding
            (meant for inference: do not train through rounded weights). float16 is
            refused on a CPU (see :func:`check_autocast_device`), bf16 is fast there.

    The module is created in eval mode; in eval mode :meth:`forward` runs under
    ``torch.inference_mode`` and returns an ordinary tensor (safe to feed to code that
    records gradients). In train mode it records gradients through the network.
    """

    def __init__(
        self,
        network: nn.Module,
        schedule: ArrayLike | SchedulerMixin,
        sigma: float,
        *,
        timestep_scale: float = 1.0,
        prediction_type: str | None = None,
        chunk_size: int | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        alphas_cumprod, prediction_type = _schedule_and_prediction(schedule, prediction_type)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        if not (math.isfinite(timestep_scale) and timestep_scale > 0):
            raise ValueError(f"timestep_scale must be positive, got {timestep_scale}")
        self.network = _callable_network(network)
        self.alphas_cumprod = alphas_cumprod
        self.timestep = sigma_to_timestep(self.alphas_cumprod, sigma)
        self.sigma = float(sigma)
        self.timestep_scale = float(timestep_scale)
        self.prediction_type = prediction_type
        self.chunk_size = chunk_size
        # Python floats, fixed with the timestep: what a compiled forward reads of the
        # (numpy) schedule.
        self._input_scale = math.sqrt(self.abar)
        self._coefficients = self._uniform_coefficients(self.timestep)
        self._weights_dtype: torch.dtype | None = None
        self.autocast_dtype = autocast_dtype
        self.eval()

    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | os.PathLike | DenoiserPreset,
        *,
        sigma: float,
        checkpoint_path: str | os.PathLike | None = None,
        **options: Any,
    ) -> OneShotDenoiser:
        """The denoiser of a preset (name or object, e.g. from a ``--denoiser-config``
        file) + ``checkpoint_path``, a diffusers directory or one of our denoiser
        checkpoints, for inputs carrying noise ``sigma``.

        ``options`` are ``chunk_size`` and ``autocast_dtype``. See
        :func:`~denoised_drs.diffusion.loading.load_denoiser_network`.
        """
        loaded = load_denoiser_network(path_or_preset, checkpoint_path)
        return cls(
            loaded.network,
            loaded.alphas_cumprod,
            sigma,
            timestep_scale=loaded.timestep_scale,
            prediction_type=loaded.prediction_type,
            **options,
        )

    def at_sigma(self, sigma: float) -> OneShotDenoiser:
        """This denoiser for inputs carrying noise ``sigma`` instead: the same network
        object (shared, not copied; compiled or not), schedule, timestep scale, prediction
        type, chunk size and autocast, with the timestep matched to ``sigma``."""
        return OneShotDenoiser(
            self.network,
            self.alphas_cumprod,
            sigma,
            timestep_scale=self.timestep_scale,
            prediction_type=self.prediction_type,
            chunk_size=self.chunk_size,
            autocast_dtype=self.autocast_dtype,
        )

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self._autocast_dtype

    @autocast_dtype.setter
    def autocast_dtype(self, dtype: torch.dtype | None) -> None:
        _check_autocast_dtype(dtype)  # the device is checked on every call
        if dtype != self._weights_dtype:
            # Only after a conversion is there anything to undo when dtype is None.
            target = dtype or torch.float32
            # A plain callable network has no weights to hold in another dtype.
            modules = self.network.modules() if isinstance(self.network, nn.Module) else ()
            for module in modules:
                if isinstance(module, _AUTOCAST_LAYERS):
                    module.to(target)
            self._weights_dtype = dtype
        self._autocast_dtype = dtype

    @property
    def size_multiple(self) -> int:
        """Heights and widths of the images must be multiples of this (1: any size)."""
        return int(getattr(self.network, "size_multiple", 1))

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless single images of ``shape`` (C, H, W) fit the network.

        A network that says what it takes (``check_image_shape``, as the OpenAI and
        diffusers UNets do: their channels, any H and W that are multiples of
        :attr:`size_multiple`) is asked; any other network is trusted.
        """
        if len(shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(shape)}")
        check = getattr(self.network, "check_image_shape", None)
        if check is not None:
            check(shape)

    @property
    def abar(self) -> float:
        """abar_t at the timestep matched to sigma."""
        return float(self.alphas_cumprod[self.timestep])

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """Denoise ``x_noisy`` (N, C, H, W): images in [0, 1] plus N(0, sigma^2) noise.

        Returns the estimate of the clean images, (N, C, H, W), in [0, 1].
        """
        _check_images(x_noisy)
        with torch.inference_mode(not self.training):
            x_t = self._input_scale * (2 * x_noisy - 1)
            x0 = self._predict_xstart_at(x_t, self._coefficients)
            denoised = (x0 + 1) / 2
        # Inference tensors cannot enter autograd later on (e.g. as a classifier's
        # training input); a clone made outside inference mode is an ordinary tensor.
        # A caller already in inference mode (the sampling engine, compiled or not)
        # needs no copy.
        if self.training or is_compiling() or torch.is_inference_mode_enabled():
            return denoised
        return denoised.clone()

    def predict_xstart(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """One network call per chunk: the clipped x0 estimate in [-1, 1] from ``x_t``.

        ``x_t`` is the diffusion state in [-1, 1] units (N, C, H, W); ``t`` the integer
        diffusion timestep, one for all or one per sample (N,). This is the
        ``pred_xstart`` (clip_denoised=True) of the OpenAI code.
        """
        _check_images(x_t)
        n = x_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).cpu()
        if t.numel() == 1:
            t = t.expand(n)
        if t.numel() != n:
            raise ValueError(f"got {t.numel()} timesteps for {n} images")
        if bool((t < 0).any() or (t >= self.alphas_cumprod.size).any()):
            raise ValueError(f"timesteps must lie in [0, {self.alphas_cumprod.size - 1}]")
        if n == 0:
            return x_t.new_empty(x_t.shape)
        if bool((t == t[0]).all()):
            return self._predict_xstart_at(x_t, self._uniform_coefficients(int(t[0])))
        chunk = self.chunk_size or n
        return torch.cat([self._predict_xstart_chunk(x_t[i : i + chunk], t[i : i + chunk])
                          for i in range(0, n, chunk)])

    def _uniform_coefficients(self, timestep: int) -> tuple[float, float | None, float | None]:
        """(the network's timestep, x_t's coefficient, the prediction's coefficient) for
        one timestep, as Python floats: float64 from the float64 schedule, then float32,
        as the OpenAI code computes them (None: the network predicts x0 itself)."""
        model_t = float(np.float32(timestep * self.timestep_scale))
        abar = float(self.alphas_cumprod[timestep])
        if self.prediction_type == "epsilon":
            scales = (math.sqrt(1 / abar), math.sqrt(1 / abar - 1))
        elif self.prediction_type == "v_prediction":
            scales = (math.sqrt(abar), math.sqrt(1 - abar))
        else:
            return model_t, None, None
        x_scale, prediction_scale = (float(np.float32(v)) for v in scales)
        return model_t, x_scale, prediction_scale

    def _predict_xstart_at(self, x_t: torch.Tensor,
                           coefficients: tuple[float, float | None, float | None]) -> torch.Tensor:
        """:meth:`predict_xstart` for one timestep shared by the batch, given its
        :meth:`_uniform_coefficients`.

        The certification engine's case, and the one ``torch.compile`` traces into one
        graph: no tensor is read back or copied from the host (the network's timesteps
        are filled on the device, the coefficients are Python floats) and no branch
        depends on tensor values. Bit-identical to the per-sample path.
        """
        model_t, x_scale, prediction_scale = coefficients
        parts = []
        for x_chunk in self._chunks(x_t):
            model_ts = torch.full((x_chunk.shape[0],), model_t, device=x_t.device,
                                  dtype=torch.float32)
            prediction = self._network_prediction(x_chunk, model_ts)
            if x_scale is None:
                parts.append(prediction.clamp(-1, 1))
            else:
                parts.append((x_scale * x_chunk.float() - prediction_scale * prediction)
                             .clamp(-1, 1))
        if not parts:
            return x_t.new_empty(x_t.shape)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _predict_xstart_chunk(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One chunk with one timestep per sample (``t``: (N,) integers on the host)."""
        prediction = self._network_prediction(
            x_t, (t.double() * self.timestep_scale).to(device=x_t.device, dtype=torch.float32))
        abar = torch.from_numpy(self.alphas_cumprod[t.numpy()])

        def coefficient(values: torch.Tensor) -> torch.Tensor:
            # float64 from the float64 schedule, then float32 (as OpenAI does).
            return values.to(device=x_t.device, dtype=torch.float32).view(-1, 1, 1, 1)

        x_t = x_t.float()
        if self.prediction_type == "epsilon":
            x0 = (coefficient((1 / abar).sqrt()) * x_t
                  - coefficient((1 / abar - 1).sqrt()) * prediction)
        elif self.prediction_type == "v_prediction":
            x0 = coefficient(abar.sqrt()) * x_t - coefficient((1 - abar).sqrt()) * prediction
        else:
            x0 = prediction
        return x0.clamp(-1, 1)

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x`` in pieces of at most ``chunk_size`` images (all of it when None)."""
        chunk = self.chunk_size or max(x.shape[0], 1)
        return [x[i : i + chunk] for i in range(0, x.shape[0], chunk)]

    def _network_prediction(self, x_t: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        """The network's prediction (its first C output channels) in float32, under the
        denoiser's autocast; ValueError for output that does not fit the input."""
        check_autocast_device(self.autocast_dtype, x_t.device)
        # Without a dtype of its own the denoiser leaves autocast as the caller set it
        # (the engine's step may run everything under one): enabled=False would undo it.
        autocast = (contextlib.nullcontext() if self.autocast_dtype is None
                    else torch.autocast(device_type=x_t.device.type, dtype=self.autocast_dtype))
        with autocast:
            output = self.network(x_t, model_t)
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"the network returned a {type(output).__name__}, not a tensor")
        channels = x_t.shape[1]
        if output.ndim != 4 or output.shape[1] < channels or output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"network output {tuple(output.shape)} does not fit input {tuple(x_t.shape)}"
            )
        return output[:, :channels].float()


class ShapeCheckedDenoiser(nn.Module):
    """A denoiser module held to its contract on every call: noisy images (N, C, H, W)
    in, a tensor of the same shape out (anything else raises ValueError)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.module(x)
        if not isinstance(output, torch.Tensor) or output.shape != x.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"the denoiser {type(self.module).__name__} maps images {tuple(x.shape)} to "
                f"{got}, not to images of the same shape"
            )
        return output

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError unless one image of ``shape`` (C, H, W) goes through the module
        (on the device of its first parameter or buffer, else the CPU)."""
        if len(shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(shape)}")
        like = next(itertools.chain(self.parameters(), self.buffers()), None)
        probe = torch.full((1, *shape), 0.5, device=like.device if like is not None else "cpu")
        try:
            with torch.inference_mode():
                self(probe)
        except RuntimeError as error:
            raise ValueError(
                f"the denoiser {type(self.module).__name__} cannot take images of shape "
                f"{tuple(shape)}: {first_line(error)}"
            ) from None


def checked_denoiser(module: nn.Module, sigma: float) -> nn.Module:
    """``module`` as the denoiser for noise ``sigma``, or ValueError (one line).

    A module with a float ``sigma`` attribute (a :class:`OneShotDenoiser`) must have been
    built for ``sigma``; a :class:`OneShotDenoiser` is returned as it is. A module whose
    ``forward`` needs more than the noisy images is refused (a diffusers ``UNet2DModel``
    takes ``(sample, timestep)`` and does not say its noise schedule: wrap it as
    ``OneShotDenoiser(unet, scheduler, sigma)``). Any other module comes back in a
    :class:`ShapeCheckedDenoiser`, whose ``check_image_shape`` tries one image.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"a denoiser must be an nn.Module, got {type(module).__name__}")
    own_sigma = getattr(module, "sigma", None)
    if isinstance(own_sigma, float) and own_sigma != sigma:
        raise ValueError(
            f"the in-memory denoiser was built for sigma={own_sigma}, the pipeline's is {sigma}"
        )
    if isinstance(module, OneShotDenoiser):
        return module
    required = _required_inputs(module)
    if len(required) > 1:
        raise ValueError(
            f"the in-memory denoiser {type(module).__name__} needs {', '.join(required)}, not "
            "noisy images alone: a diffusion network does not know its noise schedule; pass "
            "OneShotDenoiser(network, scheduler, sigma) (a diffusers scheduler or alphas_cumprod)"
        )
    return ShapeCheckedDenoiser(module)


def _required_inputs(module: nn.Module) -> list[str]:
    """The positional arguments ``module.forward`` cannot do without."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): trust the module
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in positional and p.default is p.empty]


def _callable_network(network: nn.Module) -> nn.Module:
    """``network``, with a diffusers ``UNet2DModel`` wrapped to return a tensor."""
    # An instance exists only once diffusers is imported; never import it for the check.
    if "diffusers" in sys.modules:
        from diffusers import UNet2DModel

        if isinstance(network, UNet2DModel):
            return DiffusersUNet(network)
    return network


def _schedule_and_prediction(
    schedule: ArrayLike | SchedulerMixin, prediction_type: str | None
) -> tuple[np.ndarray, str]:
    """abar_t in float64 and the prediction type, from an array or a diffusers scheduler."""
    scheduler_abar = getattr(schedule, "alphas_cumprod", None)
    if scheduler_abar is None:
        return np.asarray(schedule, dtype=np.float64), prediction_type or "epsilon"
    # A diffusers scheduler holds abar_t as a float32 tensor; float64 holds it exactly.
    alphas_cumprod = torch.as_tensor(scheduler_abar).double().numpy()
    own = str(schedule.config.prediction_type)
    if prediction_type is not None and prediction_type != own:
        raise ValueError(
            f"prediction_type {prediction_type!r} contradicts the scheduler's {own!r}"
        )
    return alphas_cumprod, own


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected a floating-point batch of images (N, C, H, W), got {shape}")
