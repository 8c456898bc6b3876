"""Training base classifiers for RS and DRS: strategies, settings and the Accelerate loop.

``train(TrainConfig(...))`` trains one classifier per branch (``full`` for RS; for DRS
one or every part of the partition, ``l`` / ``r`` of the checkerboard or ``1`` ... ``k``
of a k-part partition, each on its own noisy sub-image resized back to full size) with
the Gaussian, consistency or SmoothAdv objective. A run whose loss or weights stop
being finite raises :class:`TrainingDiverged` and saves nothing of that epoch.
"""

from .config import (
    TARGETS,
    TRAINING_RECIPES,
    WORKERS_PER_CPU,
    TrainConfig,
    branch_choices,
    branch_input,
    max_workers,
)
from .divergence import TrainingDiverged
from .loop import LOG_COLUMNS, evaluate, train, train_branch
from .strategies import (
    STRATEGIES,
    Consistency,
    ConsistencyTerms,
    Gaussian,
    SmoothAdv,
    Strategy,
    consistency_loss,
    make_strategy,
    noisy_copies,
    smoothadv_attack,
    smoothed_soft_loss,
)

__all__ = [
    "LOG_COLUMNS",
    "STRATEGIES",
    "TARGETS",
    "TRAINING_RECIPES",
    "WORKERS_PER_CPU",
    "Consistency",
    "ConsistencyTerms",
    "Gaussian",
    "SmoothAdv",
    "Strategy",
    "TrainConfig",
    "TrainingDiverged",
    "branch_choices",
    "branch_input",
    "consistency_loss",
    "evaluate",
    "make_strategy",
    "max_workers",
    "noisy_copies",
    "smoothadv_attack",
    "smoothed_soft_loss",
    "train",
    "train_branch",
]
