"""One image through our preprocessing and through each reference's chain, compared.

The reference chains are re-implemented here from reading the reference code (Carlini
et al.: ethz-spylab/diffusion_denoised_smoothing, ``{cifar10,imagenet}/certify.py`` and
``DRM.py``; the DRS authors: xiasong0501/DRS, ``DDS/imagenet/datasets.py`` and
``DRM.py``), not copied from it. Where we claim to match, the classifier's input is
equal within 1e-5; where we deliberately differ (the noise level), the difference is
measured and bounded.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from denoised_drs.data import get_dataset
from denoised_drs.diffusion import OneShotDenoiser
from denoised_drs.diffusion.presets import get_preset
from denoised_drs.diffusion.schedule import sigma_to_timestep, timestep_noise_level
from denoised_drs.models import load_classifier, read_classifier_spec
from denoised_drs.models.registry import create_model
from denoised_drs.models.wrappers import NormalizedClassifier, ResizedClassifier
from denoised_drs.partition import DrsRelease

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def network_input(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the bare network inside ``classifier`` receives for ``images``."""
    bare = next(m.model for m in classifier.modules() if isinstance(m, NormalizedClassifier))
    seen = []
    handle = bare.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        classifier(images)
    handle.remove()
    return seen[0]


def test_imagenet_crop_is_resize_256_then_centre_crop_224(tmp_path):
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(0)
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)).save(
        folder / "a.JPEG")
    # Carlini's imagenet/certify.py and DDS/imagenet/datasets.py (test split).
    reference = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    with Image.open(folder / "a.JPEG") as image:
        expected = reference(image.convert("RGB"))
    for size in (None, 224):
        ours = get_dataset("imagenet", "test", tmp_path, image_size=size)[0][0]
        assert ours.shape == (3, 224, 224)
        assert torch.equal(ours, expected)


def authors_masks(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDS code's two branch masks (its loop over flat pixel pairs, re-implemented)."""
    first = torch.zeros(height * width, dtype=torch.bool)
    count = 0
    for i in range(0, height * width, 2):
        first[i if count % 2 == 0 else i + 1] = True
        if i % width == 0:
            count += 1
    first = first.view(height, width)
    return first, ~first


def authors_imagenet_file(path, seed: int) -> None:
    """A file as the DRS authors' training script saves it: the dataset as 'arch' and the
    state dict of Sequential(NormalizeLayer, DataParallel(resnet50))."""
    torch.manual_seed(seed)
    network = create_model("resnet50", num_classes=1000)
    state = {f"1.module.{key}": value for key, value in network.state_dict().items()}
    torch.save({"epoch": 90, "arch": "imagenet", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}}, path)


def test_drs_imagenet_branch_input_equals_the_authors(tmp_path):
    """DDS/imagenet/DRM.py: the denoised 224 crop, cut by their masks into 224 x 112
    sub-images, each upsampled to 224 x 224 by nearest, normalised by ImageNet's mean
    and std, into a torchvision ResNet-50."""
    denoised = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    parts = DrsRelease().split(denoised)
    for branch, part, mask in zip("lr", parts, authors_masks(224, 224)):
        path = tmp_path / f"checkpoint_{branch}.pth.tar"
        authors_imagenet_file(path, seed=ord(branch))
        classifier = load_classifier(path, branch=branch).eval()  # nearest: their default
        # Their extraction: the masked image, bilinearly halved in width, times 2 (each
        # pair holds one kept pixel and one zero, so this is the kept pixel exactly).
        sub_image = F.interpolate(denoised * mask, size=(224, 112), mode="bilinear",
                                  align_corners=False) * 2
        upsampled = F.interpolate(sub_image, size=(224, 224), mode="nearest")
        expected = (upsampled - IMAGENET_MEAN) / IMAGENET_STD
        assert torch.allclose(network_input(classifier, part), expected, atol=1e-5)


def test_denoised_rs_imagenet_resnet50_gets_224_pixels_by_default(tmp_path):
    path = tmp_path / "cohen_imagenet_noise_0.25.pth.tar"
    torch.manual_seed(0)
    state = create_model("resnet50", num_classes=1000).state_dict()
    torch.save({"arch": "resnet50", "state_dict": {f"1.module.{k}": v for k, v in state.items()}},
               path)
    classifier = load_classifier(path).eval()
    crop = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    expected = (crop - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(network_input(classifier, crop), expected, atol=1e-5)
    # Never the image's own size: a 256 image is brought to the network's 224.
    assert network_input(classifier, torch.rand(1, 3, 256, 256)).shape[-2:] == (224, 224)


def hf_vit_folder(path, image_size: int = 224) -> None:
    """A small ViTForImageClassification saved as the hub's CIFAR-10 ViT is: config,
    weights, and the image processor's preprocessor_config.json."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=image_size, patch_size=16, hidden_size=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": image_size, "width": image_size},
        "image_processor_type": "ViTImageProcessor"}))


def test_carlini_cifar10_vit_input_equals_the_reference(tmp_path):
    """cifar10/DRM.py: the denoised image in [-1, 1], bicubic (antialias) to 224, into the
    ViT as it is; ours normalises the [0, 1] image by the processor's 0.5 / 0.5."""
    folder = tmp_path / "vit-base-patch16-224-in21k-finetuned-cifar10"
    hf_vit_folder(folder)
    classifier = load_classifier(folder, interpolation="bicubic").eval()
    denoised = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = F.interpolate(denoised * 2 - 1, size=(224, 224), mode="bicubic", antialias=True)
    seen = []
    hf_model = next(m for m in classifier.modules() if type(m).__name__.startswith("ViTFor"))
    handle = hf_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].clone()),
        with_kwargs=True)
    with torch.no_grad():
        classifier(denoised)
    handle.remove()
    assert seen[0].shape == expected.shape
    assert torch.allclose(seen[0], expected, atol=1e-5)


def test_carlini_imagenet_beit_preprocessing_is_the_references():
    """imagenet/DRM.py: the 224 crop in [-1, 1], bicubic (antialias) to 512, into
    timm's beit_large_patch16_512. Our defaults for that architecture come from timm's
    pretrained_cfg; the chain load_classifier composes from them gives the same input."""
    spec = read_classifier_spec("beit.safetensors", {}, arch="timm:beit_large_patch16_512",
                                input_size=(512, 512))
    assert (spec.input_size, spec.interpolation) == ((512, 512), "bicubic")
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)

    class Recorder(nn.Module):
        def forward(self, x):
            self.seen = x.clone()
            return x.flatten(1)[:, :2]

    recorder = Recorder()
    chain = ResizedClassifier(NormalizedClassifier(recorder, spec.mean, spec.std),
                              spec.input_size, spec.interpolation)
    crop = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    chain(crop)
    expected = F.interpolate(crop * 2 - 1, size=(512, 512), mode="bicubic", antialias=True)
    assert torch.allclose(recorder.seen, expected, atol=1e-5)


@pytest.mark.parametrize("preset, sigmas", [
    ("cifar10-uncond-50M", (0.12, 0.18, 0.25, 0.36, 0.5, 1.0)),
    ("imagenet256-uncond", (0.12, 0.18, 0.25, 0.36, 0.5, 1.0)),
])
def test_the_noise_differs_from_q_sample_only_by_its_level(preset, sigmas):
    """Both references draw x_t = q_sample(2x - 1, t, e) = sqrt(abar_t) (2x - 1) +
    sqrt(1 - abar_t) e; we add sigma e to x in pixel space and scale: sqrt(abar_t)
    (2 (x + sigma e) - 1). With sigma replaced by the timestep's own level the two are
    equal; at sigma ours carries less noise, by under 1 percent of sigma."""
    abar = get_preset(preset).alphas_cumprod()

    class Recorder(nn.Module):
        def forward(self, x_t, t):
            self.x_t = x_t.clone()
            return torch.zeros_like(x_t)

    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for sigma in sigmas:
        t = sigma_to_timestep(abar, sigma)
        level = timestep_noise_level(abar, t)
        assert sigma <= level <= 1.01 * sigma
        reference = np.sqrt(abar[t]) * (2 * image - 1) + np.sqrt(1 - abar[t]) * noise
        network = Recorder()
        OneShotDenoiser(network, abar, sigma)(image + level * noise)
        assert torch.allclose(network.x_t, reference.float(), atol=1e-5)
        OneShotDenoiser(network, abar, sigma)(image + sigma * noise)
        gap = (network.x_t - reference).abs().max().item()
        assert 0 < gap <= 2 * np.sqrt(abar[t]) * (level - sigma) * noise.abs().max() + 1e-5
