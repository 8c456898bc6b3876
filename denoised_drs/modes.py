"""The names of the library's modes: one enum per concept, defined here once.

The values are the names users write: on the command line (``--mode rs|drs``,
``--denoise joint|split``, ``--target rs|drs``), in configuration files and in
result files. They are fixed, because users' scripts depend on them. Every enum is
a ``str`` Enum, so a member compares equal to its value (``Mode.RS == "rs"``) and a
configuration holding the plain string needs no conversion.

Four concepts, and how they follow from one another:

* :class:`Mode`, the smoothing scheme: ``rs`` (randomized smoothing of the whole
  image, one branch) or ``drs`` (dual randomized smoothing, two branches, one per
  sub-image). Configuration ``mode``, ``--mode``; ``--target`` of training.
* :class:`PartitionName`, how a mode cuts an image into branches: ``identity`` for
  ``rs`` (the whole image) and ``checkerboard`` for ``drs``
  (:func:`partition_for`), or ``drs-release`` for ``drs``, the partition the DRS
  authors' released code trained its classifiers on (configuration ``partition``,
  ``--partition``). :func:`denoised_drs.partition.get_partition` takes a partition's
  or a mode's name.
* :class:`Denoise`, how DRS uses a denoiser: ``joint`` (merge both noisy halves,
  denoise once, split) or ``split`` (each branch denoises an image filled in from its
  own half). Configuration ``denoise``, ``--denoise``; ignored without a denoiser
  and for ``rs``.
* :class:`CertificateKind`, which radius is sound: ``rs``, ``independent`` (each
  branch a function of its own sub-image) or ``coupled`` (each branch a function of
  the whole noisy image). Users do not choose it: it follows from the three above
  (:func:`certificate_for`), and it decides the columns of a result file.
"""

from __future__ import annotations

from enum import Enum


class Mode(str, Enum):
    """The smoothing scheme."""

    RS = "rs"
    """Randomized smoothing: one branch, the whole image."""
    DRS = "drs"
    """Dual randomized smoothing: two branches, one per checkerboard sub-image."""


class PartitionName(str, Enum):
    """How an image is cut into the branches' sub-images."""

    IDENTITY = "identity"
    """One part, the whole image (RS)."""
    CHECKERBOARD = "checkerboard"
    """Two parts, pixels with i + j even and odd (DRS)."""
    DRS_RELEASE = "drs-release"
    """Two parts, as the DRS authors' released code cuts them (DRS, to run their
    classifiers): :class:`denoised_drs.partition.DrsRelease`."""


class Denoise(str, Enum):
    """How DRS feeds its two branches through a denoiser."""

    JOINT = "joint"
    """Merge both noisy halves, denoise once, split: the branches are coupled."""
    SPLIT = "split"
    """Each branch denoises an image built from its own half: they stay independent."""


class CertificateKind(str, Enum):
    """Which radius formula is sound for a smoothed classifier."""

    RS = "rs"
    """One branch, the whole image."""
    INDEPENDENT = "independent"
    """DRS, each branch a function of its own sub-image only (Eq. 13)."""
    COUPLED = "coupled"
    """DRS, each branch a function of the whole noisy image (joint denoising)."""


def choices(names: type[Enum]) -> tuple[str, ...]:
    """The plain string values of an enum above, in definition order (for ``choices``)."""
    return tuple(member.value for member in names)


def partition_for(mode: Mode | str) -> PartitionName:
    """The partition of a mode: identity for rs, checkerboard for drs."""
    return PartitionName.IDENTITY if Mode(mode) is Mode.RS else PartitionName.CHECKERBOARD


def certificate_for(mode: Mode | str, denoised: bool, denoise: Denoise | str) -> CertificateKind:
    """The sound certificate of a configuration: rs; for drs, coupled only with joint denoising."""
    if Mode(mode) is Mode.RS:
        return CertificateKind.RS
    if denoised and Denoise(denoise) is Denoise.JOINT:
        return CertificateKind.COUPLED
    return CertificateKind.INDEPENDENT


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes the engine's step may be compiled with (reduce-overhead and
max-autotune replay CUDA graphs)."""


__all__ = [
    "COMPILE_MODES",
    "CertificateKind",
    "Denoise",
    "Mode",
    "PartitionName",
    "certificate_for",
    "choices",
    "partition_for",
]
