"""Reading and writing classifier weights, from local files only.

Three kinds of file are understood, all read by
:func:`~denoised_drs.checkpoint_file.load_weights_only` (``torch.load`` with
``weights_only=True``, or safetensors), and one kind of folder:

* our own checkpoints (:data:`CHECKPOINT_FORMAT`): a dict with the
  :class:`ClassifierSpec` fields, the bare network's ``state_dict`` and a
  ``training`` record; :func:`load_classifier` rebuilds the exact module from them;
* Cohen-style checkpoints ``{"arch", "state_dict", ...}`` from the smoothing,
  SmoothAdv and consistency repositories, saved from
  ``Sequential(NormalizeLayer, model)`` (often under ``DataParallel``), so keys look
  like ``1.module.conv1.weight`` or ``module.1.conv1.weight``;
  the DRS authors' files record the dataset as ``arch`` (:data:`DATASET_ARCHS`);
* plain state dicts (torchvision, timm), possibly with a ``module.`` prefix;
* Hugging Face transformers image classifiers, a folder as ``save_pretrained`` writes
  it (:mod:`.hf_folder`; needs ``pip install -e '.[hf]'``).

A file whose keys do not fit the architecture gets a ValueError naming the
architecture and the first missing / unexpected / wrongly shaped key
(:func:`~denoised_drs.state_dicts.check_state_dict`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from denoised_drs.atomic_file import atomic_write
from denoised_drs.checkpoint_file import load_weights_only, with_content_hash
from denoised_drs.data import DATASET_INFO
from denoised_drs.errors import is_integer, is_real
from denoised_drs.modes import PartitionName
from denoised_drs.partition import INTERPOLATIONS, Partition, get_partition, part_shape
from denoised_drs.state_dicts import find_state_dict

from .hf_folder import folder_defaults, is_model_folder, load_hf_network
from .registry import TIMM_PREFIX, create_model, model_defaults
from .weights import load_weights
from .wrappers import (
    EnsembleClassifier,
    NormalizedClassifier,
    ResizedClassifier,
    SubImageClassifier,
)

CHECKPOINT_FORMAT = "denoised_drs.classifier"
CHECKPOINT_VERSION = 1
BRANCHES = ("full", "l", "r")
DATASET_ARCHS = {"cifar10": "cifar_resnet110", "imagenet": "resnet50"}
"""The DRS authors' training scripts record the dataset as ``arch``; these are the
networks they trained on it (Cohen et al.'s ResNet-110, torchvision's ResNet-50)."""

@dataclass
class ClassifierSpec:
    """Everything needed to rebuild a base classifier, stored in our checkpoints.

    ``branch`` is ``"full"`` for a classifier of whole images (RS), ``"l"`` / ``"r"``
    for a two-part DRS branch, or ``"1"`` ... ``"k"`` for part j of a k-part partition
    (:mod:`denoised_drs.partition`), named by ``partition`` (empty: the checkerboard,
    which ``l`` / ``r`` mean in files written before partitions were recorded). A
    branch classifier is a full-size network fed its sub-image resized to
    ``input_size`` by ``interpolation``. ``sigma`` is the training noise level
    (informative: certification takes sigma as its own argument).
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str = "custom"
    dataset: str = ""
    branch: str = "full"
    interpolation: str = "nearest"
    sigma: float | None = None
    partition: str = ""

    def __post_init__(self) -> None:
        # Checked here, so that a checkpoint's metadata of the wrong type or range is one
        # ValueError rather than a TypeError deep in model building (or a silent cast).
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a model name, got {self.arch!r}")
        for name in ("num_classes", "in_channels"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.input_size, (list, tuple)) and len(self.input_size) == 2
                and all(is_integer(v) and v >= 1 for v in self.input_size)):
            raise ValueError(
                f"input_size must be two positive integers (height, width), got "
                f"{self.input_size!r}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not (isinstance(values, (list, tuple)) and all(
                    is_real(v) and math.isfinite(v) and (name == "mean" or v > 0)
                    for v in values)):
                kind = "finite numbers" if name == "mean" else "positive finite numbers"
                raise ValueError(f"{name} must be a list of {kind}, got {values!r}")
        for name in ("normalization", "dataset", "branch", "interpolation", "partition"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.sigma is not None and not (
                is_real(self.sigma) and math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(
                f"sigma must be a finite number >= 0 (or absent), got {self.sigma!r}"
            )
        if self.branch not in BRANCHES and not (self.branch.isdigit() and int(self.branch) >= 1):
            raise ValueError(
                f"branch must be one of {BRANCHES} or a part number 1, 2, ..., got "
                f"{self.branch!r}"
            )
        if self.branch.isdigit() and not self.partition:
            raise ValueError(f"branch {self.branch} needs the partition it is a part of")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise ValueError(
                f"mean and std need one value per input channel ({self.in_channels}), "
                f"got mean={list(self.mean)} std={list(self.std)}"
            )

    @classmethod
    def for_dataset(cls, arch: str, dataset: str, **kwargs: Any) -> ClassifierSpec:
        """The spec of ``arch`` for a known dataset (classes, size, normalisation filled in
        from :data:`~denoised_drs.data.DATASET_INFO`)."""
        if dataset not in DATASET_INFO:
            raise ValueError(
                f"unknown dataset {dataset!r}; choose one of {sorted(DATASET_INFO)}"
            )
        info = DATASET_INFO[dataset]
        values = dict(
            arch=arch,
            num_classes=info.num_classes,
            in_channels=info.channels,
            input_size=info.image_size,
            mean=info.mean,
            std=info.std,
            normalization=dataset,
            dataset=dataset,
        )
        values.update(kwargs)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["input_size"] = list(self.input_size)
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ClassifierSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def model_options(self) -> dict[str, Any]:
        """The :func:`create_model` keywords of this spec's full-image classifier
        (normalisation + network): ``create_model(spec.arch, **spec.model_options())``."""
        return {
            "num_classes": self.num_classes,
            "in_chans": self.in_channels,
            "input_size": self.input_size,
            "normalization": (self.mean, self.std),
        }

    def part(self) -> tuple[Partition, int]:
        """The partition this branch classifier reads a part of, and the part's index."""
        partition = get_partition(self.partition or PartitionName.CHECKERBOARD.value)
        index = BRANCHES.index(self.branch) - 1 if self.branch in ("l", "r") else (
            int(self.branch) - 1)
        if index >= partition.num_parts:
            raise ValueError(
                f"branch {self.branch} does not exist in the {partition.name} partition "
                f"({partition.num_parts} parts)"
            )
        return partition, index

    def wrap(self, full: nn.Module) -> nn.Module:
        """``full`` as this spec's branch: itself for ``"full"``, else a sub-image classifier
        taking the part's shape."""
        if self.branch == "full":
            return full
        partition, index = self.part()
        part_size = part_shape(partition, index, (self.in_channels, *self.input_size))
        return SubImageClassifier(full, self.input_size, self.interpolation,  # type: ignore[arg-type]
                                  part_size=part_size)


REQUIRED_FIELDS = ("arch", "num_classes", "in_channels", "input_size", "mean", "std")
"""The :class:`ClassifierSpec` fields every checkpoint in our format must record."""


def is_own_checkpoint(obj: Mapping[str, Any]) -> bool:
    return obj.get("format") == CHECKPOINT_FORMAT


def own_checkpoint_spec(path: str | os.PathLike, obj: Mapping[str, Any]) -> ClassifierSpec:
    """The :class:`ClassifierSpec` that our checkpoint ``obj`` (read from ``path``) records.

    Every field is checked: a missing required field, a ``version`` that is not an
    integer from 1 to :data:`CHECKPOINT_VERSION`, a ``training`` record that is not a
    dict, or a field of the wrong type or range raises one ValueError naming ``path``.
    """
    version = obj.get("version", CHECKPOINT_VERSION)
    if not is_integer(version) or version < 1:
        raise ValueError(
            f"{path}: checkpoint version must be a positive integer, got {version!r}"
        )
    if version > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {version}; this library reads <= "
            f"{CHECKPOINT_VERSION}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        raise ValueError(f"{path}: a {CHECKPOINT_FORMAT} checkpoint with no {missing[0]!r}")
    if not isinstance(obj.get("training", {}), Mapping):
        raise ValueError(f"{path}: training must be a dict, got {obj['training']!r}")
    try:
        return ClassifierSpec.from_dict(obj)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_classifier_spec(
    path: str | os.PathLike, checkpoint: Mapping[str, Any] | None = None, **overrides: Any
) -> ClassifierSpec:
    """The :class:`ClassifierSpec` of a checkpoint file or classifier folder, with
    ``overrides`` applied.

    Our checkpoints carry it. For foreign files ``arch`` comes from the file's
    ``arch`` entry or the overrides (a DRS authors' file recording ``"cifar10"`` or
    ``"imagenet"`` means :data:`DATASET_ARCHS`' network for that dataset; a given
    dataset must then be it, and its sub-images are upsampled by nearest, as their code
    does), the input size, interpolation and normalisation from
    the architecture (:func:`~.registry.model_defaults`), the rest from ``dataset``
    (default: ``cifar10`` for ``cifar_resnet*``, ``imagenet`` otherwise). A folder's
    come from its transformers configuration (:func:`~.hf_folder.folder_defaults`).
    A given ``arch`` that contradicts a recorded one is refused.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if is_model_folder(path):
        return _folder_spec(path, overrides)
    obj = load_weights_only(path) if checkpoint is None else checkpoint
    if is_own_checkpoint(obj):
        # The file's own record first, so that its errors name the file.
        return ClassifierSpec.from_dict({**own_checkpoint_spec(path, obj).to_dict(),
                                         **overrides})
    recorded, arch = obj.get("arch"), overrides.pop("arch", None)
    if recorded is not None and not isinstance(recorded, str):
        raise ValueError(f"{path} records arch {recorded!r}, not an architecture name")
    recorded_dataset = recorded if recorded in DATASET_ARCHS else None
    if recorded_dataset is not None:
        recorded = DATASET_ARCHS[recorded_dataset]
        given = overrides.get("dataset", recorded_dataset)
        if given != recorded_dataset:
            raise ValueError(
                f"{path} records a {recorded_dataset} classifier ('arch': "
                f"{recorded_dataset!r}, a {recorded}), but dataset {given!r} was given"
            )
    if recorded is not None and arch is not None and arch != recorded:
        raise ValueError(f"{path} records architecture {recorded!r}, but arch {arch!r} was given")
    arch = arch or recorded
    if arch is None:
        raise ValueError(
            f"{path} is not a classifier checkpoint this library can rebuild: it records no "
            "architecture; name it with --arch (API: arch=NAME), e.g. resnet50 or timm:<name>"
        )
    dataset = overrides.pop("dataset", None) or (
        "cifar10" if arch.startswith("cifar_resnet") else "imagenet"
    )
    defaults = model_defaults(arch)
    if recorded_dataset is not None:
        # Their code upsamples each sub-image to the full size by nearest (DDS/imagenet/DRM.py).
        defaults["interpolation"] = "nearest"
    return ClassifierSpec.for_dataset(arch, dataset, **{**defaults, **overrides})


def _folder_spec(path: str | os.PathLike, overrides: dict[str, Any]) -> ClassifierSpec:
    """The spec of a transformers classifier folder: its record, then ``overrides``."""
    recorded = folder_defaults(path)
    for name in ("arch", "num_classes"):
        given = overrides.pop(name, None)
        if given is not None and given != recorded[name]:
            raise ValueError(
                f"{path} holds a {recorded['arch']} with {recorded['num_classes']} classes, "
                f"but {name} {given!r} was given"
            )
    arch = recorded.pop("arch")
    dataset = overrides.pop("dataset", None) or "imagenet"
    try:
        return ClassifierSpec.for_dataset(arch, dataset, **{**recorded, **overrides})
    except ValueError as error:  # a value of the folder's, or an override that misfits it
        raise ValueError(f"{path}: {error}") from None


def timm_defaults(arch: str) -> dict[str, Any]:
    """The preprocessing a ``timm:<name>`` model was trained with (its ``pretrained_cfg``:
    ``mean``, ``std``, ``input_size``, ``interpolation``), or ``{}`` for other
    architectures; :func:`~.registry.model_defaults` for timm names."""
    return model_defaults(arch) if arch.startswith(TIMM_PREFIX) else {}


def load_classifier(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
    branch: str | None = None,
    partition: str | None = None,
    interpolation: str | None = None,
    device: torch.device | str = "cpu",
    checkpoint: Mapping[str, Any] | None = None,
    classifier_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build and load the base classifier stored at ``path``, in eval mode.

    For our checkpoints everything comes from the file; a DRS branch checkpoint
    (``branch`` ``"l"`` / ``"r"``) gives a :class:`SubImageClassifier` taking
    ``(N, C, H, W/2)``, ready for ``DualSmooth``; a full one takes ``(N, C, H, W)``,
    ready for ``Smooth``. Keyword arguments override the file's metadata (e.g.
    ``branch="full"`` to get a branch's full-size network back, or ``branch="l"``
    to use any full-size classifier as a DRS branch; ``branch="3", partition="diagonal-4"``
    for part 3 of a k-part partition). Foreign checkpoints need
    ``arch`` (unless the file records it) and ``dataset`` (see :func:`read_classifier_spec`).
    ``checkpoint``, if given, is the file's content already read by
    :func:`~denoised_drs.checkpoint_file.load_weights_only`.

    ``arch`` applies to a file that records no architecture (a file recording another
    one is refused). ``classifier_size`` S makes the classifier's input S x S, and
    ``mean`` / ``std`` its normalisation. A foreign checkpoint's defaults come from
    the model's own configuration (timm's ``pretrained_cfg``: mean, std, input size,
    interpolation; the input a registered network was made for, e.g. 224 x 224
    bilinear for ``resnet50``: :func:`~.registry.model_defaults`), then from
    ``dataset``. When ``classifier_size`` is given, or the model's configuration
    names its input size, the returned classifier takes any image or sub-image and
    resizes it to that size by ``interpolation`` (:class:`ResizedClassifier`; a DRS
    sub-image (H, W/2) becomes the full square); otherwise a full classifier takes its
    images as they are and a branch its sub-images of exactly half its input width.
    A timm file saved at another input size is adapted by timm's rules (position
    embeddings resampled, :mod:`.timm_weights`).

    ``path`` may also be a transformers classifier folder (:mod:`.hf_folder`): its
    ``preprocessor_config.json`` gives the defaults of the input size, normalisation
    and interpolation, and it is always resized to its input size.
    """
    size = None if classifier_size is None else (int(classifier_size), int(classifier_size))
    options = dict(
        arch=arch,
        dataset=dataset,
        num_classes=num_classes,
        branch=branch,
        partition=partition,
        interpolation=interpolation,
        input_size=size,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
    )
    if is_model_folder(path):
        spec = read_classifier_spec(path, **options)
        full = NormalizedClassifier(load_hf_network(path), spec.mean, spec.std)
        return _resized(full, spec).to(device).eval()
    obj = load_weights_only(path) if checkpoint is None else checkpoint
    spec = read_classifier_spec(path, obj, **options)
    if spec.branch != "full" and obj.get("arch") == "cifar10":
        raise ValueError(
            f"{path} is a DRS authors' CIFAR-10 branch classifier: their code feeds it the "
            "whole 32x32 image with the other sub-image zeroed plus a max-pool fill "
            "(core1_lowres_2.py), not a sub-image, so it cannot be a branch here; train "
            "branch classifiers with scripts/train_base.py --target drs"
        )
    try:
        full = create_model(spec.arch, **spec.model_options())
        load_weights(full.model, find_state_dict(obj), spec.arch)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    named_size = not is_own_checkpoint(obj) and "input_size" in model_defaults(spec.arch)
    if size is None and not named_size:
        return spec.wrap(full).to(device).eval()
    return _resized(full, spec).to(device).eval()


def _resized(full: nn.Module, spec: ClassifierSpec) -> ResizedClassifier:
    return ResizedClassifier(full, spec.input_size, spec.interpolation)  # type: ignore[arg-type]


def member_archs(
    arch: str | Sequence[str | None] | None, count: int
) -> list[str | None]:
    """One ``arch`` per ensemble member: a name (or None) for all ``count`` members, or a
    sequence of one per member, in order (ValueError when its length is not ``count``)."""
    if arch is None or isinstance(arch, str):
        return [arch] * count
    archs = list(arch)
    if len(archs) != count:
        raise ValueError(
            f"got {len(archs)} architectures for {count} classifier(s); give one name for "
            "all or one per classifier"
        )
    return archs


def load_ensemble(
    paths: Sequence[str | os.PathLike],
    *,
    arch: str | Sequence[str | None] | None = None,
    checkpoints: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The classifiers at ``paths`` as one: an :class:`EnsembleClassifier` averaging the
    logits of several, or the classifier itself for a single path.

    ``arch`` is one name for every file, or a sequence of one per path, in order
    (:func:`member_archs`); as for :func:`load_classifier`, a file recording another
    architecture than its entry is refused. The other ``kwargs`` are
    :func:`load_classifier`'s, the same for each file; ``checkpoints``, if given, the
    files' contents already read by
    :func:`~denoised_drs.checkpoint_file.load_weights_only`, one per path (None for a
    classifier folder, or to read the file).
    """
    if checkpoints is None:
        checkpoints = [None] * len(paths)
    if len(checkpoints) != len(paths):
        raise ValueError(f"got {len(checkpoints)} checkpoint contents for {len(paths)} paths")
    archs = member_archs(arch, len(paths))
    members = [
        load_classifier(p, arch=a, checkpoint=c, **kwargs)
        for p, a, c in zip(paths, archs, checkpoints)
    ]
    return members[0] if len(members) == 1 else EnsembleClassifier(members).eval()


def classifier_checkpoint(
    full: NormalizedClassifier, spec: ClassifierSpec, training: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Our checkpoint dict for a full-image classifier built from ``spec``, with the
    content hash of its weights (verified on load, see :mod:`denoised_drs.checkpoint_file`)."""
    state = {k: v.detach().cpu().clone() for k, v in full.model.state_dict().items()}
    return with_content_hash({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **spec.to_dict(),
        "state_dict": state,
        "training": dict(training or {}),
    })


def save_classifier(
    path: str | os.PathLike,
    full: NormalizedClassifier,
    spec: ClassifierSpec,
    training: Mapping[str, Any] | None = None,
) -> None:
    """Write ``full`` (the full-size network of any branch) atomically in our format."""
    with atomic_write(path) as stream:
        torch.save(classifier_checkpoint(full, spec, training), stream)
