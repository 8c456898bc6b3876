"""Base classifiers: registry, normalisation, checkpoint loading, sub-image and ensemble
wrappers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from denoised_drs.data import DATASET_INFO
from denoised_drs.models import (
    ClassifierSpec,
    EnsembleClassifier,
    NormalizedClassifier,
    SubImageClassifier,
    create_model,
    load_classifier,
    load_ensemble,
    save_classifier,
    strip_wrapper_prefixes,
)
from denoised_drs.partition import resize

CIFAR10, FMNIST = DATASET_INFO["cifar10"], DATASET_INFO["fashion-mnist"]


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [
        ("small_cnn", 1, 28),
        ("cifar_resnet20", 3, 32),
        ("cifar_resnet20", 1, 28),
        ("timm:resnet10t", 1, 32),
    ],
)
def test_registry_builds_with_given_channels_and_classes(arch, channels, size):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=7, in_chans=channels, input_size=(size, size)).eval()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)


def test_small_cnn_is_small():
    model = create_model("small_cnn", num_classes=10, in_chans=1, input_size=(28, 28))
    params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= params <= 300_000


def test_cifar_resnet_depths_follow_6n_plus_2():
    def blocks(model):
        return sum(len(getattr(model, f"layer{i}")) for i in (1, 2, 3))

    assert blocks(create_model("cifar_resnet56", num_classes=10)) == 27
    assert blocks(create_model("cifar_resnet110", num_classes=10)) == 54
    with pytest.raises(ValueError, match="6n \\+ 2"):
        from denoised_drs.models import CifarResNet

        CifarResNet(21)


def test_resnet50_is_torchvision_without_weights():
    model = create_model("resnet50", num_classes=5)
    assert model.fc.out_features == 5
    assert type(model).__module__.startswith("torchvision")


def test_unknown_architecture_message():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'.*timm:<name>"):
        create_model("resnet9000", num_classes=10)
    with pytest.raises(ValueError, match="timm has no model"):
        create_model("timm:not_a_real_model_xyz", num_classes=10)


def test_normalisation_is_the_first_layer():
    torch.manual_seed(0)
    classifier = create_model("cifar_resnet20", num_classes=10, normalization="cifar10").eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10.mean, CIFAR10.std))
    assert torch.allclose(classifier(x), classifier.model((x - mean) / std), atol=1e-6)
    fmnist = create_model(
        "small_cnn", num_classes=10, in_chans=1, input_size=(28, 28), normalization="fashion-mnist"
    )
    assert fmnist.normalize.mean.item() == pytest.approx(0.2860)
    assert fmnist.normalize.std.item() == pytest.approx(0.3530)
    with pytest.raises(ValueError, match="channel"):
        create_model(
            "small_cnn", num_classes=10, in_chans=1, input_size=(28, 28), normalization="cifar10"
        )


class _CohenNormalizeLayer(nn.Module):
    """Like Cohen's NormalizeLayer: plain tensor attributes, nothing in the state dict."""

    def __init__(self):
        super().__init__()
        self.means = torch.tensor(CIFAR10.mean)

    def forward(self, x):
        return x


@pytest.mark.parametrize("layout", ["sequential_of_dataparallel", "dataparallel_of_sequential"])
def test_loads_cohen_style_checkpoint(tmp_path, layout):
    torch.manual_seed(0)
    network = create_model("cifar_resnet20", num_classes=10).eval()
    prefix = "1.module." if layout == "sequential_of_dataparallel" else "module.1."
    state = {prefix + k: v for k, v in network.state_dict().items()}
    if layout == "dataparallel_of_sequential":
        state["module.0.means"] = torch.zeros(3)  # a fork that registered the means as a buffer
    assert set(strip_wrapper_prefixes(state)) == set(network.state_dict())
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 90, "arch": "cifar_resnet20", "state_dict": state}, path)

    classifier = load_classifier(path)
    assert isinstance(classifier, NormalizedClassifier) and not classifier.training
    x = torch.rand(3, 3, 32, 32)
    reference = NormalizedClassifier(network, CIFAR10.mean, CIFAR10.std).eval()
    assert torch.allclose(classifier(x), reference(x), atol=1e-6)


def test_key_mismatch_names_the_architecture_and_first_keys(tmp_path):
    network = create_model("cifar_resnet20", num_classes=10)
    path = tmp_path / "cohen.pth.tar"
    torch.save({"arch": "cifar_resnet56", "state_dict": network.state_dict()}, path)
    with pytest.raises(ValueError) as info:
        load_classifier(path)
    message = str(info.value)
    assert "cifar_resnet56" in message and "missing key" in message
    assert "layer1.3.conv1.weight" in message  # the first block resnet20 lacks
    assert len(message) < 1000

    wrong_classes = tmp_path / "wrong_classes.pth.tar"
    torch.save(
        {"arch": "cifar_resnet20",
         "state_dict": create_model("cifar_resnet20", num_classes=100).state_dict()},
        wrong_classes,
    )
    with pytest.raises(ValueError, match="shape mismatch.*fc.weight"):
        load_classifier(wrong_classes)


def test_foreign_checkpoint_without_arch_asks_for_it(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(create_model("small_cnn", num_classes=10, in_chans=1,
                            input_size=(28, 28)).state_dict(), path)
    with pytest.raises(ValueError, match=r"records no architecture.*arch=NAME"):
        load_classifier(path)


def test_plain_state_dict_with_module_prefix_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    network = create_model("small_cnn", num_classes=10, in_chans=1, input_size=(28, 28)).eval()
    plain = tmp_path / "plain.pt"
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, plain)
    safe = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(safe))
    x = torch.rand(2, 1, 28, 28)
    expected = NormalizedClassifier(network, FMNIST.mean, FMNIST.std).eval()(x)
    for path in (plain, safe):
        classifier = load_classifier(path, arch="small_cnn", dataset="fashion-mnist")
        assert torch.allclose(classifier(x), expected, atol=1e-6)


def test_refuses_pickled_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"arch": "small_cnn", "state_dict": {}, "payload": ClassifierSpec}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_classifier(path)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_classifier(tmp_path / "absent.pt")


def test_own_checkpoint_round_trip_full_and_branch(tmp_path):
    torch.manual_seed(0)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch="l", sigma=0.18)
    full = create_model(spec.arch, **spec.model_options()).eval()
    path = tmp_path / "branch_l.pt"
    save_classifier(path, full, spec, {"strategy": "gaussian"})
    branch = load_classifier(path)
    assert isinstance(branch, SubImageClassifier) and branch.full_size == (28, 28)
    half = torch.rand(4, 1, 28, 14)
    assert torch.allclose(branch(half), full(resize(half, (28, 28), "nearest")), atol=1e-6)
    whole = load_classifier(path, branch="full")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(whole(x), full(x), atol=1e-6)
    bilinear = load_classifier(path, interpolation="bilinear")
    assert bilinear.mode == "bilinear"
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "denoised_drs.classifier" and raw["branch"] == "l"
    assert raw["sigma"] == 0.18 and raw["training"] == {"strategy": "gaussian"}
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_sub_image_classifier_shapes():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1)[:, :3]

    wrapper = SubImageClassifier(Recorder(), (4, 6), mode="nearest")
    half = torch.arange(2 * 1 * 4 * 3, dtype=torch.float32).view(2, 1, 4, 3)
    out = wrapper(half)
    assert out.shape == (2, 3) and seen[0].shape == (2, 1, 4, 6)
    # Nearest resizing of width 3 -> 6 repeats every column twice.
    assert torch.equal(seen[0][..., ::2], half) and torch.equal(seen[0][..., 1::2], half)
    with pytest.raises(ValueError, match=r"\(N, C, 4, 3\)"):
        wrapper(torch.rand(2, 1, 4, 6))
    with pytest.raises(ValueError, match="even width"):
        SubImageClassifier(Recorder(), (4, 5))
    with pytest.raises(ValueError, match="interpolation"):
        SubImageClassifier(Recorder(), (4, 6), mode="area")


class _Constant(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_ensemble_averages_logits():
    ensemble = EnsembleClassifier(
        [_Constant([3.0, 0.0]), _Constant([0.0, 1.0]), _Constant([0.0, 1.0])]
    )
    out = ensemble(torch.rand(5, 1, 2, 2))
    assert torch.allclose(out, torch.tensor([[1.0, 2.0 / 3.0]]).expand(5, 2))
    # Averaging probabilities would pick class 1 here (0.95 + 2 * 0.73 vs ...); logits pick class 0.
    assert out.argmax(dim=1).eq(0).all()
    with pytest.raises(ValueError, match="at least one"):
        EnsembleClassifier([])
    with pytest.raises(ValueError, match="output shape"):
        EnsembleClassifier([_Constant([1.0, 0.0]), _Constant([1.0, 0.0, 0.0])])(
            torch.rand(1, 1, 2, 2)
        )


def test_load_ensemble_of_checkpoints(tmp_path):
    torch.manual_seed(0)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist")
    fulls = [create_model(spec.arch, **spec.model_options()).eval() for _ in range(2)]
    paths = [tmp_path / f"m{i}.pt" for i in range(2)]
    for full, path in zip(fulls, paths):
        save_classifier(path, full, spec)
    x = torch.rand(3, 1, 28, 28)
    ensemble = load_ensemble(paths)
    assert torch.allclose(ensemble(x), (fulls[0](x) + fulls[1](x)) / 2, atol=1e-6)


def test_create_model_reads_weights_from_checkpoint_path(tmp_path):
    torch.manual_seed(0)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist")
    full = create_model(spec.arch, **spec.model_options()).eval()
    save_classifier(tmp_path / "ours.pt", full, spec)
    torch.save({"arch": "small_cnn", "state_dict": full.model.state_dict()}, tmp_path / "cohen.pt")
    x = torch.rand(2, 1, 28, 28)
    for name in ("ours.pt", "cohen.pt"):
        loaded = create_model(
            "small_cnn", num_classes=10, in_chans=1, input_size=(28, 28),
            normalization="fashion-mnist", checkpoint_path=tmp_path / name,
        ).eval()
        assert torch.equal(loaded(x), full(x))
    with pytest.raises(ValueError,
                       match=r"ours\.pt: the weights do not fit architecture 'small_cnn'"):
        create_model("small_cnn", num_classes=7, in_chans=1, input_size=(28, 28),
                     checkpoint_path=tmp_path / "ours.pt")
