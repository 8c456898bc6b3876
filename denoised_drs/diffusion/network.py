"""`DenoiserNetwork`: a noise-prediction network with the schedule it was trained on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn


@dataclass
class DenoiserNetwork:
    """A noise-prediction network with everything needed to call it at timestep t.

    ``network(x_t, t * timestep_scale)`` returns (N, C_out, H, W) whose first C channels
    are the prediction named by ``prediction_type`` ("epsilon", "sample" or
    "v_prediction"); ``alphas_cumprod[t]`` is abar_t (float64).
    """

    network: nn.Module
    alphas_cumprod: np.ndarray
    timestep_scale: float = 1.0
    prediction_type: str = "epsilon"
    name: str = ""
