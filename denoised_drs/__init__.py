"""denoised_drs: certified l2 robustness by (Dual) Randomized Smoothing, with diffusion denoising.

The sound core::

    from denoised_drs import Smooth, DualSmooth

and the end-to-end pipeline (partition, noise, optional diffusion denoiser,
classifiers, certificate)::

    from denoised_drs import Pipeline

On a CPU (Linux, glibc), ``denoised_drs.keep_freed_memory()`` once at start-up
makes certification up to 2x faster (the scripts call it; see
:mod:`denoised_drs.cpu_memory`).

``Pipeline``, ``PipelineConfig`` and ``CertifyRecord`` are imported on first use, so that importing
the package (e.g. for ``denoised_drs.analysis``) does not load the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

from denoised_drs.cpu_memory import keep_freed_memory
from denoised_drs.smoothing import Certificate, DualSmooth, Smooth, SmoothedClassifier

__version__ = "0.1.0"

_LAZY = {
    "CertifyRecord": "denoised_drs.results",
    "Pipeline": "denoised_drs.pipeline",
    "PipelineConfig": "denoised_drs.pipeline_config",
}

__all__ = [
    "Certificate",
    "CertifyRecord",
    "DualSmooth",
    "Pipeline",
    "PipelineConfig",
    "Smooth",
    "SmoothedClassifier",
    "__version__",
    "keep_freed_memory",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'denoised_drs' has no attribute {name!r}")
