"""The classifier's input size comes from the classifier: timm files loaded at another
size get timm's resampled position embeddings; ImageNet ResNet-50s take 224 px."""

import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from denoised_drs.models import ResizedClassifier, create_model, load_classifier, model_defaults
from denoised_drs.pipeline import Pipeline

VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit32(tmp_path_factory):
    """A plain timm ViT state dict saved by a model built at 32 px (a 2 x 2 patch grid)."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(VIT.split(":")[1], pretrained=False, num_classes=3, img_size=32)
    path = tmp_path_factory.mktemp("vit") / "vit32.pth"
    torch.save({f"module.{k}": v for k, v in vit.state_dict().items()}, path)
    return path, vit.state_dict()


@pytest.mark.parametrize("filter_fn", ["timm's checkpoint_filter_fn", "fallback"])
def test_a_timm_vit_loads_at_another_size_with_timms_resampled_pos_embed(
    vit32, monkeypatch, filter_fn
):
    from timm.layers import resample_abs_pos_embed

    path, saved = vit32
    if filter_fn == "fallback":  # a timm module without a checkpoint_filter_fn
        monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", SimpleNamespace())
    clf = load_classifier(path, arch=VIT, num_classes=3, classifier_size=64)
    assert isinstance(clf, ResizedClassifier) and clf.size == (64, 64)
    vit = clf.classifier.model
    expected = resample_abs_pos_embed(saved["pos_embed"], new_size=[4, 4], num_prefix_tokens=1)
    assert vit.pos_embed.shape == (1, 17, 192)
    assert torch.equal(vit.pos_embed.detach(), expected)
    assert torch.equal(vit.cls_token.detach(), saved["cls_token"])
    with torch.no_grad():
        assert clf(torch.rand(2, 3, 64, 64)).shape == (2, 3)


def test_a_timm_vit_without_classifier_size_takes_its_pretrained_size(vit32):
    clf = load_classifier(vit32[0], arch=VIT, num_classes=3)
    assert clf.size == (224, 224) and clf.classifier.model.pos_embed.shape == (1, 197, 192)


def input_shapes(clf):
    """The shapes the bare network of ``clf`` (a ResizedClassifier) is called with."""
    shapes = []
    clf.classifier.model.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    return shapes


def test_imagenet_resnet50s_take_224_px_whatever_the_image_size(tmp_path):
    assert model_defaults("resnet50") == {"input_size": (224, 224), "interpolation": "bilinear"}
    assert model_defaults("cifar_resnet110") == {}
    torch.manual_seed(0)
    state = create_model("resnet50", num_classes=1000).state_dict()
    plain, cohen, drs = tmp_path / "plain.pth", tmp_path / "cohen.pth.tar", tmp_path / "drs.pth"
    torch.save(state, plain)
    prefixed = {f"1.module.{k}": v for k, v in state.items()}
    torch.save({"arch": "resnet50", "state_dict": prefixed}, cohen)
    torch.save({"arch": "imagenet", "state_dict": prefixed}, drs)  # the DRS authors' layout
    full = load_classifier(plain, arch="resnet50")
    assert isinstance(full, ResizedClassifier) and full.mode == "bilinear"
    shapes = input_shapes(full)
    with torch.no_grad():
        full(torch.rand(1, 3, 256, 256))
    assert shapes == [(1, 3, 224, 224)]
    # A DRS branch's sub-image (H, W/2) is resized to the same full square.
    for path in (cohen, drs):
        branch = load_classifier(path, branch="l")
        shapes = input_shapes(branch)
        with torch.no_grad():
            assert branch(torch.rand(1, 3, 256, 128)).shape == (1, 1000)
        assert shapes == [(1, 3, 224, 224)]
    spec_size = load_classifier(plain, arch="resnet50", classifier_size=256)
    assert spec_size.size == (256, 256)


def test_a_drs_pipeline_feeds_a_registered_size_whatever_the_image_size(tmp_path, monkeypatch):
    """A cheap stand-in for ResNet-50, registered the same way (224 px, bilinear)."""
    from denoised_drs.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_INPUT_DEFAULTS", dict(registry._INPUT_DEFAULTS))

    @registry.register_model("net224", input_size=(224, 224), interpolation="bilinear")
    def net224(num_classes, in_channels, input_size):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 8, stride=8), nn.Flatten(),
                             nn.Linear(4 * 28 * 28, num_classes))  # 224 px only

    torch.manual_seed(0)
    path = tmp_path / "net224.pth"
    torch.save(create_model("net224", num_classes=2).state_dict(), path)
    pipe = Pipeline(mode="drs", classifier_l=str(path), classifier_r=str(path), arch="net224",
                    num_classes=2, n0=1, n=1, batch=1, device="cpu")
    branch = pipe.smoothed.voter.classifiers[0]
    assert isinstance(branch, ResizedClassifier) and branch.size == (224, 224)
    assert branch.mode == "bilinear"
    pipe.check_image_shape((3, 256, 256))
