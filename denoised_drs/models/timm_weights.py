"""A timm model's weights saved at one input size, loaded into the model built for another.

A ViT's absolute position embedding (and a BEiT's relative position tables) has one
entry per patch of the input it was built for, so a 224-px file does not fit the
same model built at 384 px. timm adapts such files with the model module's own
``checkpoint_filter_fn(state_dict, model)`` when it loads pretrained weights at
another size; :func:`fit_timm_state_dict` does the same for local files, so the
result is exactly what timm itself would load (position embeddings resampled
bicubically over the patch grid, class tokens kept).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import torch
from torch import nn


def is_timm_model(model: nn.Module) -> bool:
    """Whether ``model`` is a network built by timm (its class lives in ``timm``)."""
    return type(model).__module__.split(".")[0] == "timm"


def shapes_differ(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    """Whether some key of ``state_dict`` has another shape in ``model``."""
    own = model.state_dict()
    return any(k in own and tuple(v.shape) != tuple(own[k].shape) for k, v in state_dict.items())


def fit_timm_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """``state_dict`` adapted to ``model``'s input size the way timm adapts pretrained files.

    Calls the ``checkpoint_filter_fn`` of ``model``'s timm module (ViT, DeiT, BEiT,
    ...: resamples position embeddings and patch embeddings where they differ); a
    module without one gets its ``pos_embed`` resampled by
    ``timm.layers.resample_abs_pos_embed`` to the model's patch grid. Keys that
    still do not fit are left for the caller's strict check to name.
    """
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        return dict(filter_fn(dict(state_dict), model))
    fitted = dict(state_dict)
    pos_embed = getattr(model, "pos_embed", None)
    if "pos_embed" in fitted and isinstance(pos_embed, torch.Tensor):
        if fitted["pos_embed"].shape != pos_embed.shape:
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(model, "no_embed_class", False) else getattr(
                model, "num_prefix_tokens", 1)
            fitted["pos_embed"] = resample_abs_pos_embed(
                fitted["pos_embed"], new_size=list(model.patch_embed.grid_size),
                num_prefix_tokens=prefix,
            )
    return fitted
