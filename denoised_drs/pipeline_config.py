"""`PipelineConfig`: everything that defines a certification run, checked and saved.

A configuration comes from keyword arguments or a JSON / YAML file (the scripts save
one beside each result, ``OUT.config.json``); :meth:`PipelineConfig.validate` refuses
an impossible setting or a wrong type as one line, before any model is loaded or file
written. Which certificate a configuration earns follows from its ``mode``,
``denoiser`` and ``denoise`` (the names are defined in :mod:`denoised_drs.modes`):

=========================  ==========================================  ==============
mode / denoiser            branches                                    radius
=========================  ==========================================  ==============
rs, none or any denoiser   one classifier on the (denoised) image       RS
drs, none                  f_l(x_l + e_l), f_r(x_r + e_r)               independent
drs, joint                 merge, denoise once, split, classify         coupled (+ paper)
drs, split                 each branch denoises from its own half       independent
=========================  ==========================================  ==============
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from denoised_drs.adaptive import check_radii, check_tolerance
from denoised_drs.certificate import MAX_SAMPLES
from denoised_drs.errors import first_line
from denoised_drs.modes import (
    COMPILE_MODES,
    CertificateKind,
    Denoise,
    Mode,
    certificate_for,
    choices,
    partition_for,
)
from denoised_drs.noise import FLOAT32_MAX
from denoised_drs.scheme import check_sigma_bound

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The ``autocast`` names a configuration accepts, and the dtype each stands for."""
RESULT_RECORD_KEYS = ("data_dir", "skip", "max", "start", "content", "sessions")
"""Keys that a configuration saved beside a result adds to the pipeline's (the data it
certified and the content hashes, see denoised_drs.runner); ``from_file`` skips them.
``dataset`` is a configuration field itself."""
OPTIONAL_FIELDS = ("sigma_r", "denoiser", "denoiser_checkpoint", "denoiser_config", "device",
                   "autocast", "denoiser_chunk", "partition", "compile_mode")
AUTO_BATCH = "auto"
"""The ``batch`` that is chosen from free memory (see :class:`PipelineConfig`)."""
CPU_AUTO_BATCH = 1000
"""What ``batch="auto"`` is on a CPU (no allocator to measure; throughput there stops
growing long before memory runs out)."""


def _as_paths(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, (str, os.PathLike)) for v in value
    ):
        raise ValueError(f"checkpoints must be a path or a list of paths, got {value!r}")
    return [str(v) for v in value]


@dataclass
class PipelineConfig:
    """Everything that defines a certification run (see the module docstring).

    ``classifier`` (RS) or ``classifier_l`` / ``classifier_r`` (DRS) are checkpoint
    paths; several paths make an ensemble (logits averaged). ``denoiser`` is None, a
    preset name (with ``denoiser_checkpoint``), a denoised_drs denoiser checkpoint
    file, or a diffusers directory. ``denoiser_config`` is a JSON file of OpenAI flags
    describing ``denoiser_checkpoint`` (any unconditional improved-/guided-diffusion
    model, see :mod:`denoised_drs.diffusion.flags_file`), given in place of a preset
    name; ``denoiser`` is then set to the same path (so the file is recorded and hashed
    as the denoiser) and must not name anything else. ``sigma_r`` (DRS without a
    denoiser or with split denoising) gives the r branch its own noise level.
    ``partition`` names how images are cut into sub-images (None: the mode's own,
    identity for rs and checkerboard for drs; ``drs-release`` for classifiers trained
    by the DRS authors' released code).
    ``autocast`` is None, "bf16" or "fp16".
    ``autocast`` runs the whole per-batch step (denoiser and classifiers) under
    ``torch.autocast`` in that dtype.
    ``compile`` compiles the engine's whole per-batch step (noise, partition, denoiser,
    classifiers, votes) into one ``torch.compile`` graph with static shapes
    (:class:`~denoised_drs.vote_step.VoteStep`); None (the default) means on for CUDA
    devices, off on CPUs (where eager float32 uses the Winograd convolutions and the
    compile time does not pay). ``compile_mode`` is the ``torch.compile`` mode (None:
    "default"; "reduce-overhead" and "max-autotune" replay CUDA graphs). ``batch`` is a
    positive number of noise samples per forward pass or "auto" (the default): on CUDA
    the largest that fits in free memory (measured,
    :func:`~denoised_drs.batch_memory.choose_batch`), on CPUs :data:`CPU_AUTO_BATCH`;
    never more than ``max(n0, n)``. Like ``device``,
    these change only float rounding, never which rows are valid.
    ``sigma`` (and ``sigma_r``) lie in (0, :data:`~denoised_drs.scheme.MAX_SIGMA`];
    ``n0 <= n`` are at most :data:`~denoised_drs.certificate.MAX_SAMPLES` (10^9, a
    run that can still finish).
    ``adaptive`` certifies by :mod:`denoised_drs.adaptive` with ``n`` as the maximum
    sample count, at the target ``radii`` (ascending; adaptive only) if given; without
    radii, ``tolerance`` (an l2 radius; default 0.05 times the largest sigma) is how
    much radius more samples may still be expected to add when sampling stops (a
    stopping rule: it changes results, never their soundness).

    How classifier checkpoints are read and fed (None = the default in brackets):
    ``arch`` names the architecture of a file that records none (``resnet50``,
    ``cifar_resnet110``, ``timm:<name>``, ...), or lists one per ensemble member (in
    file order; for DRS the same list serves the l and the r ensemble);
    ``num_classes`` [the dataset's];
    ``classifier_size`` S, the classifier's square input, to which the (denoised)
    image or sub-image is resized [the model's: timm ``pretrained_cfg``, the file's
    record, else the dataset's]; ``interpolation`` for that resize, ``nearest``,
    ``bilinear`` or ``bicubic`` [the model's, else nearest]; ``mean`` / ``std`` the
    per-channel normalisation [the model's, else the dataset's]; ``dataset`` the data's
    name, whose classes, size and normalisation foreign files default to; and
    ``image_size``, the side of the square images the data is prepared at (the
    scripts crop ImageNet to it; :meth:`Pipeline.check_image_shape` checks it).
    """

    mode: str = Mode.DRS.value
    classifier: list[str] = field(default_factory=list)
    classifier_l: list[str] = field(default_factory=list)
    classifier_r: list[str] = field(default_factory=list)
    denoiser: str | None = None
    denoiser_checkpoint: str | None = None
    denoiser_config: str | None = None
    denoise: str = Denoise.JOINT.value
    partition: str | None = None
    branches: list[list[str]] | None = None
    sigma: float | list[float] = 0.25
    sigma_r: float | None = None
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int | str = "auto"
    seed: int = 0
    device: str | None = None
    autocast: str | None = None
    denoiser_chunk: int | None = None
    compile: bool | None = None
    compile_mode: str | None = None
    adaptive: bool = False
    radii: list[float] | None = None
    tolerance: float | None = None
    dataset: str | None = None
    arch: str | list[str] | None = None
    num_classes: int | None = None
    classifier_size: int | None = None
    interpolation: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        self.classifier = _as_paths(self.classifier)
        self.classifier_l = _as_paths(self.classifier_l)
        self.classifier_r = _as_paths(self.classifier_r)
        for name in ("denoiser", "denoiser_checkpoint", "denoiser_config"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.denoiser in ("", "none"):
            self.denoiser = None
        if self.denoiser is None and isinstance(self.denoiser_config, str):
            self.denoiser = self.denoiser_config  # the flags file names the denoiser
        if isinstance(self.radii, tuple):
            self.radii = list(self.radii)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one line) for any impossible setting or wrong type."""
        self._check_types()
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if self.denoiser_chunk is not None and self.denoiser_chunk < 1:
            raise ValueError(f"denoiser_chunk must be positive, got {self.denoiser_chunk}")
        if self.mode not in choices(Mode):
            raise ValueError(f"mode must be one of {choices(Mode)}, got {self.mode!r}")
        self._validate_partition()
        self._normalize_parts()
        if self.compile is not None and not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true, false or null, got {self.compile!r}")
        if self.compile_mode is not None:
            if self.compile_mode not in COMPILE_MODES:
                raise ValueError(
                    f"compile_mode must be one of {list(COMPILE_MODES)}, got {self.compile_mode!r}"
                )
            if self.compile is False:
                raise ValueError("compile_mode is given, but compile is off")
        if self.denoiser_checkpoint is not None and self.denoiser is None:
            raise ValueError("denoiser_checkpoint is given without a denoiser (a preset name)")
        if self.denoiser_config is not None and self.denoiser != self.denoiser_config:
            raise ValueError("denoiser_config takes the place of a denoiser: give one of them")
        if self.denoiser_config is not None and self.denoiser_checkpoint is None:
            raise ValueError("denoiser_config describes a checkpoint: give denoiser_checkpoint")
        if min(self.part_sigmas()) <= 0:
            raise ValueError(
                f"sigma must be positive, got sigma={self.sigma}, sigma_r={self.sigma_r}"
            )
        check_sigma_bound(self.part_sigmas())
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.n0 < 1 or self.n < 1:
            raise ValueError(f"N0 and N must be positive, got N0={self.n0}, N={self.n}")
        if max(self.n0, self.n) > MAX_SAMPLES:
            # A count that cannot finish (2**63 would sample forever): see MAX_SAMPLES.
            raise ValueError(
                f"N0 and N must be at most {MAX_SAMPLES:,} samples per image, got "
                f"N0={self.n0}, N={self.n}"
            )
        if self.n0 > self.n:
            raise ValueError(f"N0 ({self.n0}) must not exceed N ({self.n})")
        if not isinstance(self.adaptive, bool):
            raise ValueError(f"adaptive must be true or false, got {self.adaptive!r}")
        if self.radii is not None:
            if not self.adaptive:
                raise ValueError("radii apply to adaptive certification only (set adaptive)")
            if not isinstance(self.radii, list) or not all(
                isinstance(r, numbers.Real) and not isinstance(r, bool) for r in self.radii
            ):
                raise ValueError(f"radii must be a list of numbers, got {self.radii!r}")
            self.radii = list(check_radii(self.radii))
        if self.tolerance is not None:
            if not self.adaptive:
                raise ValueError("tolerance applies to adaptive certification only (set adaptive)")
            self.tolerance = check_tolerance(self.tolerance, self.radii)
        if self.batch != AUTO_BATCH and self.batch < 1:
            raise ValueError(f"batch must be positive or {AUTO_BATCH!r}, got {self.batch}")
        if self.denoise not in choices(Denoise):
            raise ValueError(f"denoise must be one of {choices(Denoise)}, got {self.denoise!r}")
        if self.autocast not in (None, *AUTOCAST):
            raise ValueError(
                f"autocast must be one of {sorted(AUTOCAST)} or None, got {self.autocast!r}"
            )
        self._validate_classifier_fields()
        if self.mode == Mode.RS:
            if not self.classifier:
                raise ValueError(f"mode {Mode.RS.value!r} needs a classifier checkpoint")
        elif self.num_parts == 2:
            if not self.classifier_l or not self.classifier_r:
                raise ValueError(
                    f"mode {Mode.DRS.value!r} needs classifier_l and classifier_r checkpoints"
                )
        elif any(not paths for paths in self.part_classifiers()):
            raise ValueError(
                f"the {self.partition} partition has {self.num_parts} parts: give a "
                "classifier for each (branches, --branch once per part)"
            )
        if (self.denoiser is not None and self.denoise == Denoise.JOINT
                and len(set(self.part_sigmas())) > 1):
            raise ValueError(
                "joint denoising needs one sigma: the denoiser sees the merged image once "
                "and assumes the same noise level at every pixel; use denoise split for "
                "a sigma per branch"
            )

    @property
    def num_parts(self) -> int:
        """The number of parts (branches) of this configuration's partition."""
        if self.partition is None:
            return 1 if self.mode == Mode.RS else 2
        from denoised_drs.partition import get_partition

        return get_partition(self.partition).num_parts

    def part_classifiers(self) -> list[list[str]]:
        """The classifier paths of each part, in part order (one ensemble per part)."""
        if self.mode == Mode.RS:
            return [self.classifier]
        if self.branches is None:
            return [self.classifier_l, self.classifier_r]
        return self.branches

    def part_sigmas(self) -> tuple[float, ...]:
        """The noise level of each part, in part order."""
        if isinstance(self.sigma, list):
            return tuple(self.sigma)
        if self.num_parts == 2 and self.sigma_r is not None:
            return (self.sigma, self.sigma_r)
        return (self.sigma,) * self.num_parts

    def _normalize_parts(self) -> None:
        """Per-part ``branches`` and ``sigma`` lists in their stored form: the aliases
        (``classifier``; ``classifier_l`` / ``classifier_r``; ``sigma`` / ``sigma_r``)
        where the partition has one or two parts, lists for three or more, so that a
        configuration saved before per-part lists existed is the same configuration."""
        k = self.num_parts
        if self.branches is not None:
            if not isinstance(self.branches, (list, tuple)):
                raise ValueError(f"branches must be a list with one entry per part, got "
                                 f"{self.branches!r}")
            branches = [_as_paths(entry) for entry in self.branches]
            if len(branches) != k:
                raise ValueError(
                    f"the {self.partition or self.mode} partition has {k} part(s): give one "
                    f"branch (--branch) per part, got {len(branches)}"
                )
            if self.classifier or self.classifier_l or self.classifier_r:
                raise ValueError("give the classifiers as branches or as classifier / "
                                 "classifier_l / classifier_r, not both")
            self.branches = branches
            if k == 1:
                self.classifier, self.branches = branches[0], None
            elif k == 2:
                self.classifier_l, self.classifier_r = branches
                self.branches = None
        elif k >= 3 and (self.classifier or self.classifier_l or self.classifier_r):
            raise ValueError(f"the {self.partition} partition has {k} parts: give one "
                             "branch (--branch) per part, not classifier_l / classifier_r")
        if isinstance(self.sigma, tuple):
            self.sigma = list(self.sigma)
        if isinstance(self.sigma, list):
            if not self.sigma or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real)
                or not abs(v) <= FLOAT32_MAX for v in self.sigma
            ):
                raise ValueError(f"sigma must be a finite number or a list of them, got "
                                 f"{self.sigma!r}")
            values = [float(v) for v in self.sigma]
            if len(values) not in (1, k):
                raise ValueError(
                    f"sigma: give one value for every part or one per part ({k}), "
                    f"got {len(values)}"
                )
            if self.sigma_r is not None and len(values) > 1:
                raise ValueError("give sigma_r or a list of sigmas, not both")
            if len(set(values)) == 1:  # one value (--sigma S, beside --sigma-r R or not)
                self.sigma = values[0]
            elif k == 2:
                self.sigma, self.sigma_r = values
            else:
                self.sigma = values
        if self.sigma_r is not None and k != 2:
            raise ValueError("sigma_r is the r branch's sigma: it applies to two-part DRS only")

    def _validate_classifier_fields(self) -> None:
        from denoised_drs.data import DATASETS
        from denoised_drs.partition import INTERPOLATIONS

        for name in ("num_classes", "classifier_size", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        self._validate_arch()
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not value or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not abs(v) <= FLOAT32_MAX
                for v in value
            ):
                raise ValueError(
                    f"{name} must be a list of finite numbers (one per channel), got {value!r}"
                )
            setattr(self, name, [float(v) for v in value])
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"mean and std need as many values, got {len(self.mean)} and {len(self.std)}"
            )

    def _validate_partition(self) -> None:
        if self.partition is None:
            return
        if self.mode in choices(Mode) and self.partition == partition_for(self.mode).value:
            # The mode's own partition is stored as the default, so naming it or not
            # is the same run (and resumes as one).
            self.partition = None
            return
        from denoised_drs.partition import get_partition

        if not isinstance(self.partition, str) or self.partition in choices(Mode):
            raise ValueError(f"partition must be a partition's name, got {self.partition!r}")
        parts = get_partition(self.partition).num_parts
        if (parts == 1) != (self.mode == Mode.RS):
            raise ValueError(
                f"mode {self.mode!r} needs a partition of "
                f"{'one part' if self.mode == Mode.RS else 'two or more parts'}; "
                f"{self.partition!r} has {parts}"
            )

    def _validate_arch(self) -> None:
        """``arch``: one name for every classifier file, or one per ensemble member
        (a one-name list is stored as the name)."""
        arch = self.arch
        if arch is None:
            return
        names = arch if isinstance(arch, list) else [arch]
        if not names or not all(isinstance(a, str) and a for a in names):
            raise ValueError(
                f"arch must name an architecture (e.g. resnet50 or timm:<name>) or list one "
                f"per ensemble member, got {arch!r}"
            )
        if len(names) == 1:
            self.arch = names[0]
            return
        ensembles = {"classifier": self.classifier} if self.mode == Mode.RS else {
            "classifier_l": self.classifier_l, "classifier_r": self.classifier_r}
        for name, paths in ensembles.items():
            if paths and len(paths) != len(names):
                raise ValueError(
                    f"arch lists {len(names)} architectures, one per ensemble member, but "
                    f"{name} has {len(paths)} file(s)"
                )

    def _check_types(self) -> None:
        # Values from JSON/YAML files arrive unchecked; a wrong type must fail here,
        # as one line, before any file is written. numpy scalars are accepted and
        # stored as Python numbers, so that the configuration saves as JSON.
        def check(name: str, kind: type, expected: str) -> None:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FIELDS:
                return
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} must be {expected}, got {value!r}")
            if kind is numbers.Real:
                # Noise is float32: a finite float32 (this also refuses NaN).
                if not abs(value) <= FLOAT32_MAX:
                    raise ValueError(f"{name} must be a finite number, got {value!r}")
                setattr(self, name, float(value))
            elif kind is numbers.Integral:
                setattr(self, name, int(value))

        for name in ("n0", "n", "seed", "denoiser_chunk"):
            check(name, numbers.Integral, "an integer")
        if self.batch != AUTO_BATCH:
            check("batch", numbers.Integral, f"an integer or {AUTO_BATCH!r}")
        for name in ("num_classes", "classifier_size", "image_size"):
            if getattr(self, name) is not None:
                check(name, numbers.Integral, "an integer")
        for name in ("dataset", "interpolation"):
            if getattr(self, name) is not None:
                check(name, str, "a string")
        for name in ("sigma_r", "alpha"):
            check(name, numbers.Real, "a number")
        if not isinstance(self.sigma, list):
            check("sigma", numbers.Real, "a number or a list of them, one per part")
        for name in ("mode", "denoise", "denoiser", "denoiser_checkpoint", "denoiser_config",
                     "device", "autocast", "partition", "compile_mode"):
            check(name, str, "a string")

    @property
    def certificate(self) -> CertificateKind:
        """The sound certificate of this configuration: rs, independent or coupled.

        A ``str`` Enum, so it also compares equal to its value (``== "coupled"``).
        """
        return certificate_for(self.mode, self.denoiser is not None, self.denoise)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
        if not isinstance(values, Mapping):
            raise TypeError(f"a configuration is a mapping of configuration keys, got a "
                            f"{type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PipelineConfig:
        """Read a JSON or YAML configuration file (by extension; JSON otherwise).

        Reads every configuration the scripts save (``OUT.config.json``): the keys they
        add (:data:`RESULT_RECORD_KEYS`) are dropped; any other unknown key is refused,
        so a typo in a hand-written file fails instead of being ignored.
        """
        return cls.from_dict(pipeline_values(read_config_file(path)))


def pipeline_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the keys a result's saved configuration adds
    (:data:`RESULT_RECORD_KEYS`)."""
    return {k: v for k, v in values.items() if k not in RESULT_RECORD_KEYS}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (by extension; JSON otherwise), unvalidated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot parse configuration file {path}: it is not UTF-8 text "
                         "(JSON or YAML)") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as error:  # json.JSONDecodeError, yaml.YAMLError
        raise ValueError(f"cannot parse configuration file {path}: {first_line(error)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of configuration keys")
    return values


__all__ = ["AUTOCAST", "RESULT_RECORD_KEYS", "PipelineConfig", "pipeline_values",
           "read_config_file"]
