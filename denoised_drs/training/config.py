"""Training settings, the papers' training recipes and the input each smoothing target trains on."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..data import DATASET_INFO, DATASETS
from ..modes import Mode, choices, partition_for
from ..noise import FLOAT32_MAX
from ..partition import Checkerboard, Partition, get_partition
from ..scheme import branch_names
from .strategies import STRATEGIES

TARGETS = choices(Mode)
WORKERS_PER_CPU = 4
"""The most data-loader worker processes per CPU a run may ask for (see
:func:`max_workers`)."""


def max_workers() -> int:
    """The largest ``workers`` a run accepts: :data:`WORKERS_PER_CPU` per CPU of this machine.

    Each worker is a process holding a copy of the dataset object; a count far above the
    CPUs speeds nothing up and, large enough, exhausts the memory or the process table
    before the first batch (a hang, then the out-of-memory killer).
    """
    return WORKERS_PER_CPU * (os.cpu_count() or 1)
ALL_PARTS = "all"
"""``--branch all``: one classifier per part of the partition."""
BOTH_PARTS = "both"
"""``--branch both``: the two parts of a two-part partition (as ``all``), the name
recorded for them."""


def _fill_branch(template: str, branch: str) -> Path:
    try:
        return Path(template.format(branch=branch))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{template!r}: only {{branch}} can be filled in (got {error})") from None


def branch_choices(num_parts: int) -> tuple[str, ...]:
    """The ``branch`` values a partition of ``num_parts`` parts accepts.

    One part (RS): ``full``. Two parts: ``l``, ``r``, the part numbers ``1``, ``2``
    (the same parts), ``both`` and ``all`` (both parts). ``k >= 3`` parts: the part
    numbers ``1`` ... ``k`` (their names, :func:`denoised_drs.scheme.branch_names`) and
    ``all``.
    """
    if num_parts == 1:
        return ("full",)
    numbers = tuple(str(j) for j in range(1, num_parts + 1))
    if num_parts == 2:
        return (*branch_names(2), *numbers, BOTH_PARTS, ALL_PARTS)
    return (*numbers, ALL_PARTS)


def _canonical_branch(branch: str, num_parts: int) -> str:
    """The recorded spelling of an accepted ``branch``: for two parts, ``1`` / ``2`` are
    ``l`` / ``r`` and ``all`` is ``both`` (as recorded before k-part partitions, so
    those runs resume as one); every other value is itself."""
    if num_parts == 2 and branch == ALL_PARTS:
        return BOTH_PARTS
    if num_parts == 2 and branch.isdigit():
        return branch_names(2)[int(branch) - 1]
    return branch


TRAINING_RECIPES: dict[str, dict[str, Any]] = {
    # Xia et al. (2024): DRS fine-tuning of Cohen's ResNet-110 with Adam.
    "cifar10": dict(arch="cifar_resnet110", epochs=40, lr=1e-3, milestones=(25, 35), batch=256),
    # Xia et al. (2024): DRS fine-tuning of a torchvision ResNet-50 with Adam.
    "imagenet": dict(arch="resnet50", epochs=15, lr=1e-5, milestones=(5, 10), batch=64),
    # Ours: the small CNN from scratch; about 25 s per epoch on two idle CPU cores.
    "fashion-mnist": dict(arch="small_cnn", epochs=4, lr=1e-3, milestones=(3,), batch=128),
    # Smoke runs on the 100 bundled images.
    "sample": dict(arch="small_cnn", epochs=2, lr=1e-3, milestones=(), batch=32),
}
"""Per-dataset training recipes: defaults, every value can be overridden. The CIFAR-10
and ImageNet recipes are the paper's fine-tuning schedules, meant to start from a
pretrained model (``init``)."""


@dataclass
class TrainConfig:
    """One training run.

    ``partition`` names how images are cut into parts
    (:func:`denoised_drs.partition.get_partition`); None is the target's own:
    ``identity`` for ``rs``, ``checkerboard`` for ``drs``.
    ``branch`` is ``"full"`` for RS; for DRS one of :func:`branch_choices` of the
    partition's number of parts: one part (``l`` / ``r`` or its number), or every part
    (``all``; ``both`` for two parts). Each part's classifier is a full-size network fed
    its sub-image resized to the image size (:meth:`ClassifierSpec.wrap
    <denoised_drs.models.ClassifierSpec.wrap>`).
    """

    out: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    arch: str = "small_cnn"
    strategy: str = "gaussian"
    target: str = Mode.RS.value
    branch: str = "full"
    partition: str | None = None
    sigma: float = 0.25
    epochs: int = 4
    lr: float = 1e-3
    milestones: tuple[int, ...] = (3,)
    gamma: float = 0.1
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch: int = 128
    num_noise: int | None = None
    lbd: float = 10.0
    eta: float = 0.5
    epsilon: float = 0.5
    attack_steps: int = 1
    warmup: int = 1
    interpolation: str = "nearest"
    init: str | None = None
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    max_train: int | None = None
    max_test: int | None = None
    workers: int = 0
    log: str | None = None
    keep_state: bool = False
    cpu: bool = False
    progress: bool = True

    @classmethod
    def from_recipe(cls, dataset: str, out: str, **overrides: Any) -> TrainConfig:
        """The dataset's :data:`TRAINING_RECIPES` entry with ``overrides`` (``None`` values
        ignored), validated and in its recorded spelling.

        Without a ``target``, a partition of two or more parts means ``drs``; ``drs``
        without a ``branch`` trains every part. The target's own partition is stored as
        None (naming it or not is one run), and ``branch`` as :func:`_canonical_branch`
        spells it.
        """
        if dataset not in TRAINING_RECIPES:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
        values = {**TRAINING_RECIPES[dataset],
                  **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s): {unknown}")
        partition = values.get("partition")
        if partition is not None:
            parts = get_partition(partition)
            values["partition"] = parts.name
            if "target" not in values and parts.num_parts >= 2:
                values["target"] = Mode.DRS.value
        config = cls(out=out, dataset=dataset, **values)
        if config.target == Mode.DRS and "branch" not in values:
            config = replace(config, branch=ALL_PARTS)
        config.validate()
        if config.partition == partition_for(config.target).value:
            config = replace(config, partition=None)
        return replace(
            config, branch=_canonical_branch(config.branch, config.split_partition().num_parts)
        )

    def validate(self) -> None:
        """Raise ValueError on impossible settings, before any work is done."""
        checks = [
            (self.dataset in DATASETS, f"dataset must be one of {DATASETS}"),
            (self.strategy in STRATEGIES, f"strategy must be one of {STRATEGIES}"),
            (self.target in TARGETS, f"target must be one of {TARGETS}"),
            (self.optimizer in ("adam", "sgd"), "optimizer must be 'adam' or 'sgd'"),
            (
                self.interpolation in ("nearest", "bilinear"),
                "interpolation must be 'nearest' or 'bilinear'",
            ),
            (
                math.isfinite(self.sigma) and 0 < self.sigma <= FLOAT32_MAX,
                "sigma must be positive, finite and a float32",
            ),
            (str(self.out).strip() != "", "--out is empty: give a checkpoint path"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be positive and finite"),
            (0 < self.gamma <= 1, "gamma must lie in (0, 1]"),
            (self.batch >= 1, "batch must be >= 1"),
            (all(m >= 1 for m in self.milestones), "milestones must be positive epochs"),
            (self.num_noise is None or self.num_noise >= 1, "num-noise must be >= 1"),
            (
                self.strategy != "consistency" or (self.num_noise or 2) >= 2,
                "consistency needs num-noise >= 2",
            ),
            (
                math.isfinite(self.lbd) and self.lbd >= 0
                and math.isfinite(self.eta) and self.eta >= 0,
                "lbd and eta must be non-negative and finite",
            ),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0
                and math.isfinite(self.momentum) and self.momentum >= 0,
                "weight-decay and momentum must be non-negative and finite",
            ),
            (
                math.isfinite(self.epsilon) and self.epsilon > 0
                and self.attack_steps >= 1 and self.warmup >= 0,
                "smoothadv needs a finite epsilon > 0, attack-steps >= 1, warmup >= 0",
            ),
            (self.max_train is None or self.max_train >= 1, "max-train must be >= 1"),
            (self.max_test is None or self.max_test >= 1, "max-test must be >= 1"),
            (
                0 <= self.workers <= max_workers(),
                f"workers must lie in 0 ... {max_workers()} ({WORKERS_PER_CPU} per CPU), "
                f"got {self.workers}",
            ),
            (not (self.resume and self.overwrite), "give --resume or --overwrite, not both"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self._validate_partition()

    def _validate_partition(self) -> None:
        """The partition parses, fits the target, has the branch and divides the
        dataset's images (:data:`~denoised_drs.data.DATASET_INFO`)."""
        partition = self.split_partition()
        if self.target == Mode.RS:
            if partition.num_parts != 1:
                raise ValueError(
                    f"target rs trains the full image: the partition must be identity, "
                    f"got {partition.name}"
                )
            if self.branch != "full":
                raise ValueError("target rs trains the full image: branch must be 'full'")
            return
        if partition.num_parts == 1:
            raise ValueError(
                f"target drs needs a partition of 2 or more parts, got {partition.name}"
            )
        accepted = branch_choices(partition.num_parts)
        if self.branch not in accepted:
            raise ValueError(
                f"target drs with the {partition.name} partition ({partition.num_parts} "
                f"parts) needs branch in {accepted}, got {self.branch!r}"
            )
        shape = DATASET_INFO[self.dataset].image_shape
        try:
            partition.check_image_shape(shape)
        except ValueError as error:
            raise ValueError(
                f"dataset {self.dataset} has {'x'.join(map(str, shape))} images: {error}"
            ) from None

    def split_partition(self) -> Partition:
        """The partition the branches' sub-images come from (ValueError if ``partition``
        does not parse)."""
        return get_partition(self.partition or partition_for(self.target).value)

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches trained, one model each, by their part names in part order:
        ``("full",)`` for RS; one name, or every part's (``("l", "r")`` for two parts,
        ``("1", ..., "k")`` beyond) for ``all`` / ``both``."""
        names = branch_names(self.split_partition().num_parts) or ("full",)
        if self.branch in (ALL_PARTS, BOTH_PARTS):
            return names
        if self.branch.isdigit():
            return (names[int(self.branch) - 1],)
        return (self.branch,)

    def _one_file(self) -> bool:
        return self.branch not in (ALL_PARTS, BOTH_PARTS)

    def out_path(self, branch: str) -> Path:
        """Checkpoint path for ``branch``: ``out`` itself, or with ``{branch}`` filled in /
        ``_<branch>`` (``_l``, ``_r``; ``_1`` ... ``_k``) inserted before the suffix when
        every part is trained."""
        out = str(self.out)
        if "{branch}" in out:
            return _fill_branch(out, branch)
        if self._one_file():
            return Path(out)
        path = Path(out)
        return path.with_name(f"{path.stem}_{branch}{path.suffix or '.pt'}")

    def log_path(self, branch: str) -> Path:
        """CSV log path for ``branch``: the checkpoint path with ``.csv``, or ``log`` as
        :meth:`out_path` treats ``out``."""
        if self.log is None:
            return self.out_path(branch).with_suffix(".csv")
        if "{branch}" in self.log:
            return _fill_branch(self.log, branch)
        path = Path(self.log)
        return path if self._one_file() else path.with_name(f"{path.stem}_{branch}{path.suffix}")

    def lr_at(self, epoch: int) -> float:
        """Step schedule: ``lr * gamma ** (number of milestones <= epoch)`` (epochs count
        from 0)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def resume_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues.

        Everything that can change the trained weights; left out are the output
        paths, how progress is shown, the device choice, the worker count and
        ``epochs`` (a finished run may be extended). Paths are compared resolved, so
        another spelling of the same folder or file is the same setting.
        """
        free = {"out", "log", "resume", "overwrite", "keep_state", "cpu", "progress", "workers",
                "epochs"}
        values = {k: v for k, v in self.record().items() if k not in free}
        for key in ("data_dir", "init"):
            if values[key] is not None:
                values[key] = os.path.realpath(values[key])
        return values

    def record(self) -> dict[str, Any]:
        """The settings as plain values, stored in checkpoints."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["milestones"] = list(self.milestones)
        return values


def branch_input(x: torch.Tensor, branch: str, partition: Partition | None = None) -> torch.Tensor:
    """What a classifier of ``branch`` sees of a clean batch: the image (``"full"``), or
    its part named ``branch`` (:func:`denoised_drs.scheme.branch_names`) of ``partition``
    (None: the checkerboard), i.e. ``partition.split(x)[j]`` for the j-th name.

    Noise is added afterwards; since it is i.i.d. per pixel, noising the part equals
    taking the part of the noised image. Raises ValueError for a name the partition
    does not have.
    """
    if branch == "full":
        return x
    partition = partition or Checkerboard()
    names = branch_names(partition.num_parts)
    if branch not in names:
        raise ValueError(
            f"the {partition.name} partition has branches {names}, got {branch!r}"
        )
    return partition.split(x)[names.index(branch)]
