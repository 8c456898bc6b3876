"""A classifier's weights into its network: wrapper prefixes and normalisation layer
removed, the fit checked key by key, then loaded strictly.

Checkpoints from the public smoothing code bases (Cohen et al., SmoothAdv,
consistency) were saved from ``Sequential(NormalizeLayer, model)``, often under
``DataParallel``, so their keys look like ``1.module.conv1.weight`` or
``module.1.conv1.weight``; ours hold ``NormalizedClassifier.model``'s keys. Both
load into the bare network. A timm model built for another input size than the
file's gets the file adapted first, as timm adapts pretrained weights
(:mod:`.timm_weights`: position embeddings resampled). Used by
:func:`~denoised_drs.models.registry.create_model` (``checkpoint_path``) and
:mod:`.loading`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from denoised_drs.state_dicts import check_state_dict, strip_prefixes

from .timm_weights import fit_timm_state_dict, is_timm_model, shapes_differ

# Names a normalisation layer's buffers have had in the public smoothing code bases.
_NORMALIZE_BUFFER_NAMES = {"mean", "std", "means", "sds", "mu", "sigma"}


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``DataParallel`` / ``torch.compile`` prefixes and the normalisation layer.

    ``1.module.conv1.weight``, ``module.1.conv1.weight``, ``module.conv1.weight`` and
    ``model.conv1.weight`` (our :class:`NormalizedClassifier`) all become
    ``conv1.weight``. Keys of the normalisation layer (``0.means``,
    ``normalize.mean``, ...) are dropped: the normalisation is rebuilt from metadata.
    """
    sd = strip_prefixes(state_dict)
    changed = True
    while changed:
        changed = False
        for norm, body in (("0.", "1."), ("normalize.", "model.")):
            body_keys = [k for k in sd if k.startswith(body)]
            rest = [k for k in sd if not k.startswith(body)]
            rest_is_normalizer = all(
                k.startswith(norm) and k[len(norm) :] in _NORMALIZE_BUFFER_NAMES for k in rest
            )
            if body_keys and rest_is_normalizer:
                sd = strip_prefixes({k[len(body) :]: sd[k] for k in body_keys})
                changed = True
    return sd


def load_weights(network: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    """Load ``state_dict`` (prefixes stripped) into ``network`` strictly, or explain the misfit
    in one line (:class:`~denoised_drs.state_dicts.StateDictMismatchError`).

    Only for a timm ``network`` whose shapes differ from the file's, the file is
    first adapted by timm's own rules (:func:`~.timm_weights.fit_timm_state_dict`).
    """
    sd = strip_wrapper_prefixes(state_dict)
    if is_timm_model(network) and shapes_differ(sd, network):
        sd = fit_timm_state_dict(sd, network)
    check_state_dict(
        sd,
        network.state_dict(),
        f"the weights do not fit architecture {arch!r}",
        hint="check the architecture, the number of classes and input channels",
    )
    network.load_state_dict(sd, strict=True)
