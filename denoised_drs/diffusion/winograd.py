"""Winograd 3x3 convolutions on CPUs, through the NNPACK kernels that PyTorch ships.

oneDNN's direct convolutions already run at about this CPU class's peak FLOP rate
(``benchmarks/bench_unet.py --ceiling``), so a UNet made of them cannot get much faster
by scheduling alone. Winograd's F(6x6, 3x3) algorithm computes a 3x3 convolution with
several times fewer multiplications; NNPACK implements it for float32 on x86 and
ARM, and PyTorch carries it (``torch._nnpack_spatial_convolution``), but only picks it
when oneDNN is switched off. :class:`WinogradConv2d` picks it per layer, on CPUs where
it pays: fewer multiplications do not always win. NNPACK's kernels use 256-bit vectors;
on a CPU whose oneDNN direct kernels run full-width AVX-512 (the project's newer
machines, which also have AMX) Winograd ran every layer of the 50M UNet at 0.6x the
direct speed, while on an AVX-512 CPU without AMX it was faster. So the first eligible
call in a process times one fixed layer both ways (:func:`winograd_pays`, once per
thread count, about 0.1 s) and takes Winograd only if it is at least :data:`PAYOFF`
times faster; :func:`set_winograd` overrides that.

Guarantees and limits:

* It is taken only for float32 CPU inference (gradients off, autocast off, no
  forward-mode tangents, not inside ``torch.compile``, NNPACK not switched off
  through ``torch.backends.nnpack``)
  of 3x3, stride-1, padding-1, ungrouped, undilated, zero-padded convolutions on
  images at least :data:`MIN_SIDE` pixels on each side; every other call runs the
  layer's own ``nn.Conv2d.forward``. Training is unchanged. TorchScript cannot script
  the layer; ``torch.compile`` traces its direct path.
* The choice never depends on the batch size (the timing uses a fixed input, not the
  caller's), and NNPACK's result for one image is
  the same, bit for bit, whatever the batch it is in or the thread count (tested at
  1 and 2 threads, up to 128 channels): these layers add no dependence on the batch.
  The rest of a network still runs oneDNN, whose kernels depend on the batch size
  (differences of about 1e-6), so a whole UNet's output agrees across batch sizes to
  float32 rounding, not bit for bit.
* Winograd rounds differently: outputs differ from the direct convolution by about
  1e-5 of their scale (max |difference| of the full 50M UNet's output from the
  original improved-diffusion code: 2e-5; the direct path: 3e-6). Which path a CPU
  takes is therefore a rounding matter, like the batch size or the device: it never
  changes which results are valid. The margin measured (Winograd 1.6x slower per
  layer on one machine, faster on the other) makes the choice usually the same on one
  machine, but a heavily loaded CPU can time it either way, so processes or resumed
  runs may take different paths: a difference in rounding only.
"""

from __future__ import annotations

import functools
import threading
import time

import torch
from torch import nn
from torch.autograd import forward_ad

try:
    from torch.compiler import is_compiling
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling

MIN_SIDE = 16
"""Smallest height and width given to Winograd: at 8x8 and below oneDNN is as fast or
faster (measured on the 50M UNet's layers, one core)."""


PAYOFF = 1.2
"""Winograd is taken only where it ran the calibration layer at least this much faster."""
_CALIBRATION_SHAPE = (4, 128, 32, 32)
"""Batch, channels (in and out) and side of the calibration layer: the 50M UNet's widest."""

_forced: bool | None = None


def set_winograd(enabled: bool | None) -> bool | None:
    """Force the Winograd path on (True) or off (False) for every eligible call, or let
    :func:`winograd_pays` decide (None, the default). Returns the previous setting."""
    global _forced
    if not isinstance(enabled, (bool, type(None))):
        raise ValueError(f"set_winograd takes True, False or None, got {enabled!r}")
    previous, _forced = _forced, enabled
    return previous


def _best_seconds(run, repeats: int = 3) -> float:
    run()  # warm-up: first calls allocate and (NNPACK) initialise
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


_calibration_lock = threading.Lock()


@functools.cache
def _calibrated(threads: int) -> bool:
    # The calls forward makes, on channels-last activations and weights as the UNet
    # holds them (forward copies both to contiguous for NNPACK, so the timing does too).
    batch, channels, side, _ = _CALIBRATION_SHAPE
    cpu = {"dtype": torch.float32, "device": "cpu"}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=generator, **cpu)
    weight = torch.randn(channels, channels, 3, 3, generator=generator, **cpu)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = (weight / (9 * channels) ** 0.5).contiguous(memory_format=torch.channels_last)
    bias = torch.zeros(channels, **cpu)
    try:
        with torch.inference_mode():
            direct = _best_seconds(lambda: torch.nn.functional.conv2d(x, weight, bias, 1, 1))
            winograd = _best_seconds(lambda: torch._nnpack_spatial_convolution(
                x.contiguous(), weight.contiguous(), bias, (1, 1), (1, 1)))
    except RuntimeError:  # NNPACK refused this CPU or build: the direct path, for good
        return False
    return direct >= PAYOFF * winograd


def winograd_pays() -> bool:
    """Whether eligible calls take Winograd: the :func:`set_winograd` setting if any,
    else whether NNPACK ran a fixed 128-channel 32-px layer at least :data:`PAYOFF`
    times faster than oneDNN's direct convolution, timed once per process and thread
    count (never on the caller's data, so never dependent on the batch)."""
    if _forced is not None:
        return _forced
    if not _nnpack_initialised():
        return False
    with _calibration_lock:  # concurrent first calls would disturb each other's timing
        return _calibrated(torch.get_num_threads())


@functools.cache
def _nnpack_initialised() -> bool:
    return bool(torch._nnpack_available())  # the first call initialises NNPACK


def nnpack_ready() -> bool:
    """Whether NNPACK is compiled in, initialises on this CPU, and is not switched off
    (``torch.backends.nnpack.flags(enabled=False)``)."""
    return _nnpack_initialised() and bool(torch._C._get_nnpack_enabled())


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _has_tangent(tensor: torch.Tensor) -> bool:
    return forward_ad.unpack_dual(tensor).tangent is not None


def _winograd_shape(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs eligible CPU inference calls through NNPACK's Winograd
    kernel (see the module docstring); same parameters, same state dict. A layer of
    any other shape (kernel, stride, padding, dilation, groups, padding mode) always
    runs the direct convolution."""

    def uses_winograd(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` takes the Winograd path."""
        return (
            _winograd_shape(self)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.ndim == 4
            and min(x.shape[-2:]) >= MIN_SIDE
            and not torch.is_grad_enabled()
            and not _autocast_on()
            and not _has_tangent(x)
            and not _has_tangent(self.weight)
            # torch.compile cannot trace the NNPACK op (it has no meta kernel); a
            # compiled network gets the direct convolution, which its compiler handles.
            and not is_compiling()
            and nnpack_ready()
            and winograd_pays()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_winograd(x):
            return torch._nnpack_spatial_convolution(
                x.contiguous(), self.weight.contiguous(), self.bias, self.padding, self.stride
            )
        return super().forward(x)


def use_winograd(module: nn.Module) -> int:
    """Turn every plain 3x3 / stride-1 / padding-1 ``nn.Conv2d`` in ``module`` into a
    :class:`WinogradConv2d`, in place (parameters and state-dict keys are untouched).
    Returns how many layers were converted."""
    converted = 0
    for conv in module.modules():
        if type(conv) is nn.Conv2d and _winograd_shape(conv):
            conv.__class__ = WinogradConv2d
            converted += 1
    return converted


__all__ = ["MIN_SIDE", "PAYOFF", "WinogradConv2d", "nnpack_ready", "set_winograd",
           "use_winograd", "winograd_pays"]
