"""Classifiers from other code bases: transformers folders, the DRS authors' checkpoints,
and ensembles of several architectures."""

import json
import re
import sys

import pytest
import torch

from denoised_drs.data import DATASET_INFO
from denoised_drs.models import (
    EnsembleClassifier,
    NormalizedClassifier,
    ResizedClassifier,
    create_model,
    load_classifier,
    load_ensemble,
    read_classifier_spec,
)
from denoised_drs.models.hf_folder import preprocessor_defaults
from denoised_drs.partition import resize
from denoised_drs.pipeline import Pipeline

CIFAR10 = DATASET_INFO["cifar10"]
FAST = {"n0": 4, "n": 8, "batch": 8, "device": "cpu", "sigma": 0.25}
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def write_vit_folder(folder, seed, head=True):
    """A tiny ViT image classifier as save_pretrained writes it, with a hand-written
    preprocessor_config.json (32 px, bicubic, MEAN / STD)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=10)
    (ViTForImageClassification if head else ViTModel)(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": MEAN,
        "image_std": STD, "resample": 3, "rescale_factor": 1 / 255,
        "size": {"height": 32, "width": 32}}))
    return folder


@pytest.fixture(scope="module")
def vit_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return [write_vit_folder(root / f"vit{seed}", seed) for seed in (0, 1)]


def hf_logits(folder, pixels):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def test_a_transformers_folder_gives_the_models_own_logits(vit_folders):
    folder = vit_folders[0]
    clf = load_classifier(folder)
    assert isinstance(clf, ResizedClassifier) and clf.size == (32, 32) and clf.mode == "bicubic"
    torch.manual_seed(0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for shape in ((2, 3, 48, 48), (2, 3, 32, 16)):  # an image, and a DRS sub-image
        x = torch.rand(shape)
        expected = hf_logits(folder, (resize(x, (32, 32), "bicubic") - mean) / std)
        with torch.no_grad():
            assert torch.allclose(clf(x), expected, atol=1e-5)
    # The user's normalisation and interpolation win over the folder's.
    clf = load_classifier(folder, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="nearest")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clf(x), hf_logits(folder, (resize(x, (32, 32)) - 0.5) / 0.5),
                              atol=1e-5)
    spec = read_classifier_spec(folder, input_size=(64, 64), dataset="cifar10")
    assert spec.input_size == (64, 64) and spec.num_classes == 10 and spec.mean == MEAN
    assert spec.arch == "hf:ViTForImageClassification"


@pytest.mark.parametrize("processor, expected", [
    ({"size": {"shortest_edge": 40}, "resample": 0},
     {"input_size": (40, 40), "interpolation": "nearest"}),
    ({"size": 36, "resample": 2, "image_mean": 0.5, "image_std": 0.25},
     {"input_size": (36, 36), "interpolation": "bilinear", "mean": (0.5,) * 3,
      "std": (0.25,) * 3}),
    ({"size": {"shortest_edge": 256}, "do_center_crop": True,
      "crop_size": {"height": 224, "width": 224}, "resample": 1},
     {"input_size": (224, 224)}),
    ({"size": {"height": 24, "width": 40}, "do_normalize": False, "image_mean": [0.5] * 3,
      "image_std": [0.5] * 3},
     {"input_size": (24, 40), "mean": (0.0,) * 3, "std": (1.0,) * 3}),
])
def test_preprocessor_sizes_normalisation_and_resampling(processor, expected):
    assert preprocessor_defaults(processor, 3) == expected


def test_classifier_folders_in_the_pipeline(vit_folders, tmp_path):
    first, second = map(str, vit_folders)
    rs = Pipeline(mode="rs", classifier=first, dataset="cifar10", **FAST)
    assert rs.smoothed.num_classes == 10
    drs = Pipeline(mode="drs", classifier_l=[first, second], classifier_r=second, **FAST)
    assert isinstance(drs.smoothed.voter.classifiers[0], EnsembleClassifier)
    record = drs.certify_one(torch.rand(3, 32, 32), 3, 0)
    assert len(record.p_lower) == 2
    # A folder is never "not found": it is a classifier folder, or told what one holds.
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no config.json: a classifier folder must hold"):
        Pipeline(mode="rs", classifier=str(empty), **FAST)
    with pytest.raises(ValueError, match="holds a hf:ViTForImageClassification with 10 classes"):
        Pipeline(mode="rs", classifier=first, num_classes=5, **FAST)
    with pytest.raises(ValueError, match="but arch 'resnet50' was given"):
        load_classifier(first, arch="resnet50")


def test_a_folder_without_its_classification_head_is_refused(tmp_path):
    folder = write_vit_folder(tmp_path / "backbone", 0, head=False)
    with pytest.raises(ValueError, match="leave 2 parameter.*unset, first 'classifier.bias'"):
        load_classifier(folder)


def test_a_folder_without_transformers_says_how_to_install_it(vit_folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=re.escape("pip install -e '.[hf]'")):
        load_classifier(vit_folders[0])


def drs_authors_file(path, arch, network):
    """A checkpoint as the DRS authors' scripts save it: 'arch' names the dataset, the
    weights are Sequential(NormalizeLayer, DataParallel(model))'s (Cohen's NormalizeLayer
    holds plain tensors, so it adds no keys)."""
    state = {f"1.module.{k}": v for k, v in network.state_dict().items()}
    torch.save({"epoch": 90, "arch": arch, "state_dict": state}, path)
    return path


def test_drs_authors_cifar10_checkpoints_are_cohens_resnet110(tmp_path):
    torch.manual_seed(0)
    network = create_model("cifar_resnet110", num_classes=10).eval()
    path = drs_authors_file(tmp_path / "drs_cifar10.pth.tar", "cifar10", network)
    clf = load_classifier(path)
    assert isinstance(clf, NormalizedClassifier)
    x = torch.rand(2, 3, 32, 32)
    reference = NormalizedClassifier(network, CIFAR10.mean, CIFAR10.std).eval()
    with torch.no_grad():
        assert torch.allclose(clf(x), reference(x), atol=1e-5)
    spec = read_classifier_spec(path, arch="cifar_resnet110", dataset="cifar10")
    assert (spec.arch, spec.dataset, spec.mean) == ("cifar_resnet110", "cifar10", CIFAR10.mean)
    with pytest.raises(ValueError, match="records architecture 'cifar_resnet110'.*cifar_resnet20"):
        load_classifier(path, arch="cifar_resnet20")
    with pytest.raises(ValueError, match="records a cifar10 classifier.*dataset 'imagenet'"):
        load_classifier(path, dataset="imagenet")
    # Their CIFAR-10 code feeds these networks a masked full-size image, not a sub-image.
    with pytest.raises(ValueError, match="CIFAR-10 branch classifier.*not a sub-image"):
        Pipeline(mode="drs", classifier_l=str(path), classifier_r=str(path), **FAST)


def test_an_ensemble_of_two_architectures_takes_one_arch_per_member(tmp_path):
    torch.manual_seed(0)
    resnet = create_model("cifar_resnet20", num_classes=10).eval()
    cnn = create_model("small_cnn", num_classes=10, in_chans=3, input_size=(32, 32)).eval()
    paths = [tmp_path / "resnet.pt", tmp_path / "cnn.pt"]
    for path, network in zip(paths, (resnet, cnn)):
        torch.save(network.state_dict(), path)
    archs = ["cifar_resnet20", "small_cnn"]
    ensemble = load_ensemble(paths, arch=archs, dataset="cifar10")
    x = torch.rand(2, 3, 32, 32)
    members = [NormalizedClassifier(n, CIFAR10.mean, CIFAR10.std).eval() for n in (resnet, cnn)]
    with torch.no_grad():
        assert torch.allclose(ensemble(x), (members[0](x) + members[1](x)) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="got 1 architectures for 2 classifier"):
        load_ensemble(paths, arch=["cifar_resnet20"], dataset="cifar10")
    # An entry never silently loses to a file's record: a contradiction is refused.
    recorded = tmp_path / "recorded.pt"
    torch.save({"arch": "cifar_resnet20", "state_dict": resnet.state_dict()}, recorded)
    with pytest.raises(ValueError, match="records architecture 'cifar_resnet20'.*'small_cnn'"):
        load_ensemble([paths[0], recorded], arch=archs, dataset="cifar10")
    pipe = Pipeline(mode="rs", classifier=[str(p) for p in paths], arch=archs,
                    dataset="cifar10", **FAST)
    assert pipe.smoothed.num_classes == 10
    with torch.no_grad():
        assert torch.allclose(pipe.smoothed.voter.classifiers[0](x), ensemble(x), atol=1e-4)


def test_a_folder_whose_weights_do_not_fit_is_one_clear_error(tmp_path):
    folder = write_vit_folder(tmp_path / "vit", 0)
    config = json.loads((folder / "config.json").read_text())
    config["num_labels"] = 5  # the head in model.safetensors has 10 rows
    config.pop("id2label", None), config.pop("label2id", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a loadable classifier"):
        load_classifier(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_labels": 10}))
    (folder / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="not a loadable classifier"):
        load_classifier(folder)
