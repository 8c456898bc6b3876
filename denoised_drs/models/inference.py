"""Inference-time rewrites of a classifier that keep its function (up to float rounding).

A smoothed classifier evaluates its base network on 10^4 - 10^5 noisy copies per
image, so the network's forward is nearly all of the certification time. Two
standard rewrites make it cheaper without changing what it computes beyond float
rounding (about 1e-6 on logits; the certificate is a statement about the network as
evaluated, so it stays exact for the rewritten network):

* eval-mode BatchNorm folded into the convolution before it
  (``torch.fx.experimental.optimization.fuse``), applied to the largest submodules
  that torch.fx can trace; modules with Python control flow on shapes (e.g. the
  shape checks in :class:`SubImageClassifier`) are searched below instead;
* convolution weights in ``channels_last`` layout, which oneDNN (CPU) and cuDNN
  prefer.

Measured on the bundled Fashion-MNIST SmallCNN (2 CPU cores, batches of 400): 2.3x
faster than the plain eval-mode network.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

logger = logging.getLogger(__name__)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every traceable conv + BatchNorm pair folded into one conv.

    ``module`` must be in eval mode (folding uses the running statistics); it is
    left unchanged. A module with no BatchNorm is returned as it is.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode")
    if not _has_batchnorm(module):
        return module
    return _fold_in_place(copy.deepcopy(module))


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BATCHNORM) for m in module.modules())


def _fold_in_place(module: nn.Module) -> nn.Module:
    if not _has_batchnorm(module):
        return module
    try:
        # fuse traces before it rewrites anything, so a failure leaves module intact.
        return fuse(module, inplace=True)
    # torch.fx raises several exception types on untraceable code (TraceError,
    # TypeError, AssertionError, ...); any of them means "look one level down".
    except Exception as error:  # noqa: BLE001
        logger.debug("not traceable as a whole (%s): %s", type(module).__name__, error)
    for name, child in module.named_children():
        setattr(module, name, _fold_in_place(child))
    return module


def prepare_for_inference(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` on ``device`` in eval mode, BatchNorm folded, weights channels_last.

    For inference only: the result must not be trained (BatchNorm is gone). Like
    ``nn.Module.to``, this moves and switches ``model`` itself; the fold works on a
    copy, so ``model`` keeps its BatchNorm layers and still computes the same function.
    """
    model = fold_batchnorm(model.to(device).eval())
    return model.to(memory_format=torch.channels_last)
