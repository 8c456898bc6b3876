"""`Pipeline`: partition, noise, optional denoiser, classifiers and certifier in one object.

    from denoised_drs import Pipeline

    pipe = Pipeline(mode="drs", classifier_l="l.pt", classifier_r="r.pt", sigma=0.18,
                    n=10_000)
    records = pipe.certify(images, labels, indices)

The configuration is a :class:`PipelineConfig` (keyword arguments, or a JSON / YAML
file); :meth:`Pipeline.save_config` writes it beside a result so the run can be
repeated exactly. Which certificate is printed follows from the configuration:

=========================  ==========================================  ==============
mode / denoiser            branches                                    radius
=========================  ==========================================  ==============
rs, none or any denoiser   one classifier on the (denoised) image       RS
drs, none                  f_l(x_l + e_l), f_r(x_r + e_r)               independent
drs, joint                 merge, denoise once, split, classify         coupled (+ paper)
drs, split                 each branch denoises from its own half       independent
=========================  ==========================================  ==============

The result for an image depends only on the seed and the image's index.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoised_drs.adaptive import check_radii
from denoised_drs.atomic_file import atomic_write
from denoised_drs.batch_memory import check_batch_fits, peak_bytes_per_sample
from denoised_drs.certify import CertificateKind
from denoised_drs.checkpoint_file import load_weights_only
from denoised_drs.errors import first_line
from denoised_drs.noise import FLOAT32_MAX
from denoised_drs.partition import Checkerboard, Identity
from denoised_drs.results import CertifyRecord
from denoised_drs.smoothing import ABSTAIN, SmoothedClassifier
from denoised_drs.voters import (
    BranchClassifiers,
    DenoisedClassifier,
    JointDenoisedBranches,
    SplitDenoisedBranches,
)

MODES = ("rs", "drs")
DENOISE_MODES = ("joint", "split")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
RESULT_RECORD_KEYS = ("data_dir", "skip", "max", "content")
"""Keys that a configuration saved beside a result adds to the pipeline's (the data it
certified and the content hashes, see denoised_drs.runner); ``from_file`` skips them.
``dataset`` is a configuration field itself."""
OPTIONAL_FIELDS = ("sigma_r", "denoiser", "denoiser_checkpoint", "device", "autocast", "denoiser_chunk")
CLASSIFIER_FIELDS = (
    "dataset", "arch", "num_classes", "classifier_size", "interpolation", "mean", "std", "image_size"
)
"""Optional fields that say how classifier files are read and fed (None: their defaults)."""


def _as_paths(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
        raise ValueError(f"checkpoints must be a path or a list of paths, got {value!r}")
    return [str(v) for v in value]


@dataclass
class PipelineConfig:
    """Everything that defines a certification run (see the module docstring).

    ``classifier`` (RS) or ``classifier_l`` / ``classifier_r`` (DRS) are checkpoint
    paths; several paths make an ensemble (logits averaged). ``denoiser`` is None, a
    preset name (with ``denoiser_checkpoint``), a denoised_drs denoiser checkpoint
    file, or a diffusers directory. ``sigma_r`` (DRS without a denoiser only) gives
    the r branch its own noise level. ``autocast`` is None, "bf16" or "fp16".
    ``adaptive`` certifies by :mod:`denoised_drs.adaptive` with ``n`` as the maximum
    sample count, at the target ``radii`` (ascending; adaptive only) if given.

    How classifier checkpoints are read and fed (None = the default in brackets):
    ``arch`` names the architecture of a file that records none (``resnet50``,
    ``cifar_resnet110``, ``timm:<name>``, ...); ``num_classes`` [the dataset's];
    ``classifier_size`` S, the classifier's square input, to which the (denoised)
    image or sub-image is resized [the model's: timm ``pretrained_cfg``, the file's
    record, else the dataset's]; ``interpolation`` for that resize, ``nearest``,
    ``bilinear`` or ``bicubic`` [the model's, else nearest]; ``mean`` / ``std`` the
    per-channel normalisation [the model's, else the dataset's]; ``dataset`` the data's
    name, whose classes, size and normalisation foreign files default to; and
    ``image_size``, the side of the square images the data is prepared at (the
    scripts crop ImageNet to it; :meth:`Pipeline.check_image_shape` checks it).
    """

    mode: str = "drs"
    classifier: list[str] = field(default_factory=list)
    classifier_l: list[str] = field(default_factory=list)
    classifier_r: list[str] = field(default_factory=list)
    denoiser: str | None = None
    denoiser_checkpoint: str | None = None
    denoise: str = "joint"
    sigma: float = 0.25
    sigma_r: float | None = None
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int = 1000
    seed: int = 0
    device: str | None = None
    autocast: str | None = None
    denoiser_chunk: int | None = None
    adaptive: bool = False
    radii: list[float] | None = None
    dataset: str | None = None
    arch: str | None = None
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
        for name in ("denoiser", "denoiser_checkpoint"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if self.denoiser in ("", "none"):
            self.denoiser = None
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
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.denoiser_checkpoint is not None and self.denoiser is None:
            raise ValueError("denoiser_checkpoint is given without a denoiser (a preset name)")
        if not self.sigma > 0 or (self.sigma_r is not None and not self.sigma_r > 0):
            raise ValueError(f"sigma must be positive, got sigma={self.sigma}, sigma_r={self.sigma_r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.n0 < 1 or self.n < 1:
            raise ValueError(f"N0 and N must be positive, got N0={self.n0}, N={self.n}")
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
        if self.batch < 1:
            raise ValueError(f"batch must be positive, got {self.batch}")
        if self.denoise not in DENOISE_MODES:
            raise ValueError(f"denoise must be one of {DENOISE_MODES}, got {self.denoise!r}")
        if self.autocast not in (None, *AUTOCAST):
            raise ValueError(f"autocast must be one of {sorted(AUTOCAST)} or None, got {self.autocast!r}")
        self._validate_classifier_fields()
        if self.mode == "rs":
            if not self.classifier:
                raise ValueError("mode 'rs' needs a classifier checkpoint")
            if self.sigma_r is not None:
                raise ValueError("sigma_r applies to DRS only")
        else:
            if not self.classifier_l or not self.classifier_r:
                raise ValueError("mode 'drs' needs classifier_l and classifier_r checkpoints")
            if self.denoiser is not None and self.sigma_r not in (None, self.sigma):
                raise ValueError("with a denoiser both branches share one sigma")

    def _validate_classifier_fields(self) -> None:
        from denoised_drs.data import DATASETS
        from denoised_drs.partition import INTERPOLATIONS

        for name in ("num_classes", "classifier_size", "image_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.arch == "":
            raise ValueError("arch is empty; name an architecture, e.g. resnet50 or timm:<name>")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (list, tuple)) or not value or any(
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not abs(v) <= FLOAT32_MAX
                for v in value
            ):
                raise ValueError(f"{name} must be a list of finite numbers (one per channel), got {value!r}")
            setattr(self, name, [float(v) for v in value])
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need as many values, got {len(self.mean)} and {len(self.std)}")

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

        for name in ("n0", "n", "batch", "seed", "denoiser_chunk"):
            check(name, numbers.Integral, "an integer")
        for name in ("num_classes", "classifier_size", "image_size"):
            if getattr(self, name) is not None:
                check(name, numbers.Integral, "an integer")
        for name in ("dataset", "arch", "interpolation"):
            if getattr(self, name) is not None:
                check(name, str, "a string")
        for name in ("sigma", "sigma_r", "alpha"):
            check(name, numbers.Real, "a number")
        for name in ("mode", "denoise", "denoiser", "denoiser_checkpoint", "device", "autocast"):
            check(name, str, "a string")

    @property
    def certificate(self) -> CertificateKind:
        """The sound certificate of this configuration: rs, independent or coupled.

        A ``str`` Enum, so it also compares equal to its value (``== "coupled"``).
        """
        if self.mode == "rs":
            return CertificateKind.RS
        if self.denoiser is not None and self.denoise == "joint":
            return CertificateKind.COUPLED
        return CertificateKind.INDEPENDENT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PipelineConfig:
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
    """``values`` without the keys a result's saved configuration adds (:data:`RESULT_RECORD_KEYS`)."""
    return {k: v for k, v in values.items() if k not in RESULT_RECORD_KEYS}


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (by extension; JSON otherwise), unvalidated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    text = path.read_text()
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


def _resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device (default: CUDA when available), or a one-line ValueError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


@dataclass(frozen=True)
class PredictRecord:
    idx: int
    predict: int
    time: float


IN_MEMORY = "<in-memory>"
"""What a :class:`PipelineConfig` records in place of a model given as an ``nn.Module``."""
MODEL_FIELDS = ("classifier", "classifier_l", "classifier_r", "denoiser")


def _is_modules(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, nn.Module) for v in value)


class Pipeline:
    """Compose the stages of a certification run from a :class:`PipelineConfig`.

    Models are loaded once, at construction, onto ``config.device`` (default: CUDA
    when available, else CPU). Raises FileNotFoundError for a missing checkpoint
    and ValueError for an impossible setting, before any work is done.

    ``classifier``, ``classifier_l``, ``classifier_r`` (an ``nn.Module`` or a list of
    them, an ensemble) and ``denoiser`` may also be given as keyword arguments holding
    models in memory. A classifier module maps images in [0, 1] to logits; it is
    resized to ``classifier_size`` (DRS sub-images: to the full image's shape when
    None) and normalised by ``mean`` / ``std`` when given; its number of classes is
    ``num_classes`` or its own ``num_classes`` attribute. A denoiser module maps noisy
    images in [0, 1] to denoised ones (e.g. a :class:`OneShotDenoiser` for the same
    sigma); it is used as given (``autocast`` and ``denoiser_chunk`` do not apply).
    The configuration records them as ``"<in-memory>"``, so such a pipeline cannot be
    saved (:meth:`save_config` raises ValueError, and so does the resumable runner).
    """

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        modules = {k: overrides.pop(k) for k in MODEL_FIELDS if _is_modules(overrides.get(k))}
        overrides.update({k: IN_MEMORY for k in modules})
        if config is None:
            config = PipelineConfig.from_dict(overrides)
        elif overrides:
            config = PipelineConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.device = _resolve_device(config.device)
        if config.autocast is not None:
            from denoised_drs.diffusion import check_autocast_device

            # Refused up front: fp16 on a CPU runs about 50x slower than float32.
            check_autocast_device(AUTOCAST[config.autocast], self.device)
        self.modules = modules
        self.denoiser = self._load_denoiser()
        self.smoothed = self._build_smoothed()

    @property
    def in_memory(self) -> list[str]:
        """The model fields given as in-memory modules (their configuration cannot reload)."""
        return sorted(self.modules)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> Pipeline:
        return cls(PipelineConfig.from_file(path), **overrides)

    def save_config(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the configuration (plus ``extra``, e.g. the dataset) as JSON, atomically.

        Raises ValueError for a pipeline built from in-memory models: a configuration
        naming ``"<in-memory>"`` could neither be reloaded nor guard a resumed result.
        """
        if self.modules:
            raise ValueError(
                f"this pipeline's {', '.join(self.in_memory)} are in-memory models, so its "
                "configuration cannot be saved; save them as checkpoint files and pass their paths"
            )
        with atomic_write(path, "w") as stream:
            stream.write(json.dumps({**self.config.to_dict(), **(extra or {})}, indent=2) + "\n")

    # -- construction ------------------------------------------------------------

    def _classifier(self, field_name: str, branch: str | None) -> tuple[nn.Module, int]:
        """The (ensemble) classifier of ``field_name`` and its number of classes."""
        from denoised_drs.models import (
            EnsembleClassifier,
            load_classifier,
            prepare_for_inference,
            read_classifier_spec,
        )

        if field_name in self.modules:
            return self._module_classifier(self.modules[field_name], branch)
        config = self.config
        paths = getattr(config, field_name)
        for path in paths:
            if path == IN_MEMORY:
                raise ValueError(f"{field_name} is {IN_MEMORY!r}: pass the nn.Module itself")
            if not Path(path).is_file():
                raise FileNotFoundError(f"classifier checkpoint not found: {path}")
        options = {
            "arch": config.arch,
            "dataset": config.dataset,
            "num_classes": config.num_classes,
            "interpolation": config.interpolation,
        }
        checkpoints = [load_weights_only(path) for path in paths]
        classes = {read_classifier_spec(p, c, **options).num_classes for p, c in zip(paths, checkpoints)}
        if len(classes) != 1:
            raise ValueError(f"the classifiers {paths} disagree on the number of classes: {sorted(classes)}")
        members = [
            load_classifier(
                p, branch=branch, device=self.device, checkpoint=c,
                classifier_size=config.classifier_size, mean=config.mean, std=config.std, **options,
            )
            for p, c in zip(paths, checkpoints)
        ]
        model = members[0] if len(members) == 1 else EnsembleClassifier(members)
        return prepare_for_inference(model, self.device), classes.pop()

    def _module_classifier(self, given: nn.Module | Sequence[nn.Module], branch: str | None) -> tuple[nn.Module, int]:
        """In-memory classifier(s), resized and normalised as the configuration says."""
        from denoised_drs.models import (
            EnsembleClassifier,
            NormalizedClassifier,
            ResizedClassifier,
            prepare_for_inference,
        )

        config = self.config
        members = [given] if isinstance(given, nn.Module) else list(given)
        classes = {config.num_classes or getattr(m, "num_classes", None) for m in members}
        if None in classes:
            raise ValueError("an in-memory classifier needs num_classes (or a num_classes attribute)")
        if len(classes) != 1:
            raise ValueError(f"the in-memory classifiers disagree on the number of classes: {sorted(classes)}")
        size = None if config.classifier_size is None else (config.classifier_size,) * 2
        wrapped = []
        for member in members:
            if config.mean is not None or config.std is not None:
                channels = len(config.mean or config.std or ())
                member = NormalizedClassifier(
                    member, config.mean or [0.0] * channels, config.std or [1.0] * channels
                )
            wrapped.append(
                ResizedClassifier(member, size, config.interpolation or "nearest", sub_image=branch is not None)
            )
        model = wrapped[0] if len(wrapped) == 1 else EnsembleClassifier(wrapped)
        return prepare_for_inference(model, self.device), classes.pop()

    def _load_denoiser(self) -> nn.Module | None:
        config = self.config
        if config.denoiser is None:
            return None
        if "denoiser" in self.modules:
            return self._module_denoiser(self.modules["denoiser"])
        if config.denoiser == IN_MEMORY:
            raise ValueError(f"denoiser is {IN_MEMORY!r}: pass the nn.Module itself")
        from denoised_drs.diffusion import OneShotDenoiser, load_denoiser_network

        loaded = load_denoiser_network(config.denoiser, config.denoiser_checkpoint)
        return OneShotDenoiser(
            loaded.network.to(self.device),
            loaded.alphas_cumprod,
            config.sigma,
            timestep_scale=loaded.timestep_scale,
            prediction_type=loaded.prediction_type,
            chunk_size=config.denoiser_chunk,
            autocast_dtype=AUTOCAST.get(config.autocast) if config.autocast else None,
        )

    def _module_denoiser(self, denoiser: nn.Module | Sequence[nn.Module]) -> nn.Module:
        if not isinstance(denoiser, nn.Module):
            raise ValueError("denoiser must be one nn.Module, not a list")
        sigma = getattr(denoiser, "sigma", None)
        if isinstance(sigma, float) and sigma != self.config.sigma:
            raise ValueError(f"the in-memory denoiser was built for sigma={sigma}, the pipeline's is {self.config.sigma}")
        return denoiser.to(self.device).eval()

    def _build_smoothed(self) -> SmoothedClassifier:
        config = self.config
        if config.mode == "rs":
            classifier, num_classes = self._classifier("classifier", None)
            if self.denoiser is not None:
                classifier = DenoisedClassifier(self.denoiser, classifier)
            return SmoothedClassifier(
                BranchClassifiers([classifier]), Identity(), num_classes, (config.sigma,),
                device=self.device,
            )
        classifier_l, num_classes = self._classifier("classifier_l", "l")
        classifier_r, num_classes_r = self._classifier("classifier_r", "r")
        if num_classes != num_classes_r:
            raise ValueError(f"the DRS branches disagree on the number of classes: {num_classes}, {num_classes_r}")
        sigma_r = config.sigma if config.sigma_r is None else config.sigma_r
        if self.denoiser is None:
            voter: nn.Module = BranchClassifiers([classifier_l, classifier_r])
        elif config.denoise == "joint":
            voter = JointDenoisedBranches(self.denoiser, classifier_l, classifier_r)
        else:
            voter = SplitDenoisedBranches(self.denoiser, classifier_l, classifier_r, config.sigma)
        return SmoothedClassifier(
            voter, Checkerboard(), num_classes, (config.sigma, sigma_r), device=self.device
        )

    # -- running -----------------------------------------------------------------

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError if images of ``shape`` (C, H, W) cannot go through this pipeline,
        or if a forward pass of ``config.batch`` of them surely exceeds free memory."""
        if len(shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(shape)}")
        self.smoothed.partition.check_image_shape(shape)
        size = self.config.image_size
        if size is not None and tuple(shape[-2:]) != (size, size):
            raise ValueError(f"images of shape {tuple(shape)} are not of image_size {size}")
        # The denoiser says what it takes (a UNet: its channels, sides that are
        # multiples of its downsampling factor); an in-memory module is left to the probe.
        check_denoiser = getattr(self.denoiser, "check_image_shape", None)
        if check_denoiser is not None:
            check_denoiser(tuple(shape))
        probe = torch.zeros((1, *shape), device=self.device)
        parts = self.smoothed.partition.split(probe)
        fresh = probe if getattr(self.smoothed.voter, "needs_fresh_noise", False) else None
        try:
            with torch.inference_mode():
                per_sample = peak_bytes_per_sample(self.smoothed.voter, lambda: self.smoothed.voter(parts, fresh))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"images of shape {tuple(shape)} do not fit the models: {first_line(error)}"
            ) from None
        batch = min(self.config.batch, max(self.config.n0, self.config.n))
        check_batch_fits(batch, per_sample, self.device)

    def certify_one(self, image: torch.Tensor, label: int, idx: int) -> CertifyRecord:
        """Certify one image (adaptively if ``config.adaptive``); noise seeded by ``(config.seed, idx)``.

        Raises ValueError for a label outside [0, num_classes).
        """
        config = self.config
        if not 0 <= int(label) < self.smoothed.num_classes:
            # A label no class can equal would turn every abstention into "correct".
            raise ValueError(
                f"label {label} of image {idx} lies outside [0, {self.smoothed.num_classes})"
            )
        start = time.perf_counter()
        seed = (config.seed, idx)
        if config.adaptive:
            cert = self.smoothed.certify_adaptive(
                image, config.n0, config.n, config.alpha, config.batch, seed, config.radii
            )
        else:
            cert = self.smoothed.certify(image, config.n0, config.n, config.alpha, config.batch, seed=seed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return CertifyRecord.from_certificate(idx, int(label), cert, time.perf_counter() - start)

    def certify(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        labels: Sequence[int],
        indices: Sequence[int] | None = None,
    ) -> list[CertifyRecord]:
        """Certify each image; ``indices`` (default 0, 1, ...) seed their noise."""
        indices = list(range(len(labels))) if indices is None else list(indices)
        if not len(images) == len(labels) == len(indices):
            raise ValueError(
                f"need as many images, labels and indices, got {len(images)}, {len(labels)}, {len(indices)}"
            )
        return [self.certify_one(x, int(y), int(i)) for x, y, i in zip(images, labels, indices)]

    def predict(
        self, images: torch.Tensor | Sequence[torch.Tensor], indices: Sequence[int] | None = None
    ) -> list[PredictRecord]:
        """Cohen's PREDICT for each image with ``n`` samples (-1 = abstain)."""
        config = self.config
        indices = list(range(len(images))) if indices is None else list(indices)
        records = []
        for x, idx in zip(images, indices):
            start = time.perf_counter()
            prediction = self.smoothed.predict(x, config.n, config.alpha, config.batch, seed=(config.seed, idx))
            records.append(PredictRecord(int(idx), prediction, time.perf_counter() - start))
        return records


__all__ = ["ABSTAIN", "IN_MEMORY", "RESULT_RECORD_KEYS", "CertifyRecord", "Pipeline", "PipelineConfig", "PredictRecord"]
