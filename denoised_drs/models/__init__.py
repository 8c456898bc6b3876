"""Base classifiers: networks by name, normalisation, sub-image and ensemble wrappers, loading.

Every classifier here maps images in [0, 1] to logits; normalisation is its first
layer, so smoothing noise is added in pixel space. Weights come only from local
files and folders (:func:`load_classifier`; transformers folders through
:mod:`.hf_folder`); nothing is ever downloaded.
"""

from .cifar_resnet import CifarResNet
from .hf_folder import HFImageClassifier
from .inference import fold_batchnorm, prepare_for_inference
from .loading import (
    BRANCHES,
    CHECKPOINT_FORMAT,
    DATASET_ARCHS,
    ClassifierSpec,
    classifier_checkpoint,
    is_own_checkpoint,
    load_classifier,
    load_ensemble,
    member_archs,
    read_classifier_spec,
    save_classifier,
    timm_defaults,
)
from .registry import create_model, list_models, model_defaults, register_model
from .small_cnn import SmallCNN
from .weights import load_weights, strip_wrapper_prefixes
from .wrappers import (
    EnsembleClassifier,
    Normalize,
    NormalizedClassifier,
    ResizedClassifier,
    SubImageClassifier,
    normalization_for,
)

__all__ = [
    "BRANCHES",
    "CHECKPOINT_FORMAT",
    "CifarResNet",
    "ClassifierSpec",
    "DATASET_ARCHS",
    "EnsembleClassifier",
    "HFImageClassifier",
    "Normalize",
    "NormalizedClassifier",
    "ResizedClassifier",
    "SmallCNN",
    "SubImageClassifier",
    "classifier_checkpoint",
    "create_model",
    "fold_batchnorm",
    "is_own_checkpoint",
    "list_models",
    "load_classifier",
    "load_ensemble",
    "load_weights",
    "member_archs",
    "model_defaults",
    "normalization_for",
    "prepare_for_inference",
    "read_classifier_spec",
    "register_model",
    "save_classifier",
    "strip_wrapper_prefixes",
    "timm_defaults",
]
