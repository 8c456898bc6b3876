"""Training settings, the papers' training recipes and the input each smoothing target trains on."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..data import DATASETS
from ..modes import Mode, choices
from ..noise import FLOAT32_MAX
from ..partition import checkerboard_split
from .strategies import STRATEGIES

TARGETS = choices(Mode)


def _fill_branch(template: str, branch: str) -> Path:
    try:
        return Path(template.format(branch=branch))
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"{template!r}: only {{branch}} can be filled in (got {error})") from None
DRS_BRANCHES = ("l", "r", "both")

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
    """One training run. ``branch`` is ``"full"`` for RS and ``"l"``/``"r"``/``"both"`` for DRS."""

    out: str
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    arch: str = "small_cnn"
    strategy: str = "gaussian"
    target: str = Mode.RS.value
    branch: str = "full"
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
        ignored)."""
        if dataset not in TRAINING_RECIPES:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
        values = {**TRAINING_RECIPES[dataset],
                  **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training setting(s): {unknown}")
        config = cls(out=out, dataset=dataset, **values)
        if config.target == Mode.DRS and "branch" not in values:
            config = replace(config, branch="both")
        config.validate()
        return config

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
            (self.epochs >= 1, "epochs must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be positive"),
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
                self.epsilon > 0 and self.attack_steps >= 1 and self.warmup >= 0,
                "smoothadv needs epsilon > 0, attack-steps >= 1, warmup >= 0",
            ),
            (self.max_train is None or self.max_train >= 1, "max-train must be >= 1"),
            (self.max_test is None or self.max_test >= 1, "max-test must be >= 1"),
            (self.workers >= 0, "workers must be >= 0"),
            (not (self.resume and self.overwrite), "give --resume or --overwrite, not both"),
        ]
        if self.target == Mode.RS:
            checks.append(
                (self.branch == "full", "target rs trains the full image: branch must be 'full'")
            )
        else:
            checks.append(
                (self.branch in DRS_BRANCHES, f"target drs needs branch in {DRS_BRANCHES}")
            )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches trained, one model each: ``("full",)``, ``("l",)``, ``("r",)`` or
        ``("l", "r")``."""
        return ("l", "r") if self.branch == "both" else (self.branch,)

    def out_path(self, branch: str) -> Path:
        """Checkpoint path for ``branch``: ``out`` itself, or with ``{branch}`` filled in /
        ``_l``/``_r`` inserted before the suffix when ``branch == "both"``."""
        out = str(self.out)
        if "{branch}" in out:
            return _fill_branch(out, branch)
        if self.branch != "both":
            return Path(out)
        path = Path(out)
        return path.with_name(f"{path.stem}_{branch}{path.suffix or '.pt'}")

    def log_path(self, branch: str) -> Path:
        if self.log is None:
            return self.out_path(branch).with_suffix(".csv")
        if "{branch}" in self.log:
            return _fill_branch(self.log, branch)
        path = Path(self.log)
        return (
            path if self.branch != "both" else path.with_name(f"{path.stem}_{branch}{path.suffix}")
        )

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


def branch_input(x: torch.Tensor, branch: str) -> torch.Tensor:
    """What a classifier of ``branch`` sees of a clean batch: the image or its checkerboard half.

    Noise is added afterwards; since it is i.i.d. per pixel, noising the half equals
    taking the half of the noised image.
    """
    if branch == "full":
        return x
    x_l, x_r = checkerboard_split(x)
    return x_l if branch == "l" else x_r
