"""Off-the-shelf classifiers behind a denoiser: --arch, sizes, normalisation, ImageNet layout."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from module_files import load_module
from torch import nn

from denoised_drs.cli import run_script
from denoised_drs.models import ResizedClassifier, load_classifier, timm_defaults
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "certify_diffusion.py"
VIT = "timm:vit_tiny_patch16_224"


def load_script():
    return load_module(SCRIPT, "certify_diffusion")


def run_cli(argv, capsys):
    """The script in this process, through run_script: (exit status, stderr lines)."""
    module = load_script()
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: module.main(argv), str(SCRIPT))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def paper_files(tmp_path_factory):
    """ImageNet-layout data, plain timm ViT state dicts and a 256-px diffusers denoiser."""
    import timm
    from diffusers import DDPMScheduler, UNet2DModel
    from PIL import Image

    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    for label in ("n01440764", "n01443537"):
        folder = root / "imagenet" / "val" / label
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "image.png")
    torch.manual_seed(0)
    # A plain state dict, as timm saves it (no metadata), under DataParallel / compile prefixes.
    vit = timm.create_model(VIT.split(":")[1], pretrained=False, num_classes=2, img_size=32)
    torch.save({f"module.{k}": v for k, v in vit.state_dict().items()}, root / "vit.pth")
    from safetensors.torch import save_file

    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in vit.state_dict().items()},
              str(root / "vit.safetensors"))
    unet = UNet2DModel(sample_size=256, block_out_channels=(8, 16), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1)
    unet.save_pretrained(root / "denoiser")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "denoiser")
    return root


def vit_args(files, out, *extra):
    return ["--dataset", "imagenet", "--data-dir", str(files / "imagenet"), "--arch", VIT,
            "--num-classes", "2", "--classifier-size", "32", "--denoiser", str(files / "denoiser"),
            "--sigma", "0.5", "--N0", "4", "--N", "20", "--batch", "10", "--device", "cpu",
            "--outfile", str(out), *extra]


@pytest.mark.parametrize("mode", ["rs", "drs-joint"])
def test_cli_on_imagenet_layout_with_a_plain_timm_state_dict(paper_files, tmp_path, capsys, mode):
    out = tmp_path / "out.tsv"
    if mode == "rs":
        # Native 256-px images; the denoised image is resized bicubically to the ViT's 32.
        extra = ["--mode", "rs", "--classifier", str(paper_files / "vit.pth"), "--image-size",
                 "256", "--interpolation", "bicubic"]
    else:
        # The default 224-px crop goes through the 256-px UNet (224 is a multiple of 2).
        extra = ["--mode", "drs", "--denoise", "joint", "--classifier-l",
                 str(paper_files / "vit.pth"),
                 "--classifier-r", str(paper_files / "vit.safetensors")]
    status, err = run_cli(vit_args(paper_files, out, *extra), capsys)
    assert status == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("idx\tlabel\tpredict")
    assert [line.split("\t")[1] for line in lines[1:]] == ["0", "1"]
    saved = json.loads(Path(f"{out}.config.json").read_text())
    assert saved["skip"] == 1 and saved["arch"] == VIT and saved["num_classes"] == 2
    # The saved configuration reloads through the API, extra keys and all.
    config = Pipeline.from_file(f"{out}.config.json").config
    assert config.classifier_size == 32 and config.dataset == "imagenet"
    assert config.image_size == (256 if mode == "rs" else None)
    assert config.interpolation == ("bicubic" if mode == "rs" else None)


def test_timm_models_get_their_own_normalisation_and_size(paper_files):
    assert timm_defaults("timm:vit_base_patch16_224") == {
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "input_size": (224, 224),
        "interpolation": "bicubic"}
    assert timm_defaults("timm:beit_large_patch16_512")["input_size"] == (512, 512)
    assert timm_defaults("resnet50") == {}
    clf = load_classifier(paper_files / "vit.pth", arch=VIT, num_classes=2, classifier_size=32)
    assert isinstance(clf, ResizedClassifier) and clf.size == (32, 32) and clf.mode == "bicubic"
    normalize = clf.classifier.normalize
    assert torch.allclose(normalize.mean.flatten(), torch.full((3,), 0.5))
    assert torch.allclose(normalize.std.flatten(), torch.full((3,), 0.5))
    # Given values win over the model's; any input size is resized to the classifier's.
    clf = load_classifier(paper_files / "vit.pth", arch=VIT, num_classes=2, classifier_size=32,
                          mean=(0.1, 0.2, 0.3), std=(1, 1, 1), interpolation="nearest")
    assert clf.mode == "nearest" and torch.allclose(clf.classifier.normalize.mean.flatten(),
                                                    torch.tensor([0.1, 0.2, 0.3]))
    assert clf(torch.rand(3, 3, 48, 24)).shape == (3, 2)


def test_resized_classifier_upsamples_sub_images_to_full_shape():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.shape)
            return x.flatten(1)[:, :2]

    ResizedClassifier(Recorder(), None, "nearest", sub_image=True)(torch.rand(2, 3, 8, 4))
    ResizedClassifier(Recorder(), (224, 224), "bicubic")(torch.rand(2, 3, 32, 32))
    assert seen == [(2, 3, 8, 8), (2, 3, 224, 224)]


class _TinyNet(nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def test_pipeline_takes_in_memory_models_and_refuses_to_save_them(tmp_path):
    torch.manual_seed(0)
    pipe = Pipeline(mode="drs", classifier_l=_TinyNet(), classifier_r=[_TinyNet(), _TinyNet()],
                    denoiser=nn.Identity(), sigma=0.25, n0=4, n=16, batch=8, device="cpu",
                    classifier_size=16, interpolation="bilinear")
    assert pipe.in_memory == ["classifier_l", "classifier_r", "denoiser"]
    assert pipe.config.certificate == "coupled"
    images = torch.rand(2, 3, 8, 8)
    pipe.check_image_shape(images.shape[1:])
    records = pipe.certify(images, [0, 1])
    assert [r.n_used for r in records] == [16, 16]
    with pytest.raises(ValueError, match="in-memory models"):
        pipe.save_config(tmp_path / "config.json")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="num_classes"):
        Pipeline(mode="rs", classifier=nn.Flatten(), device="cpu")


def test_denoiser_accepts_multiples_of_its_downsampling_factor(paper_files):
    pipe = Pipeline(mode="rs", classifier=str(paper_files / "vit.pth"), arch=VIT, num_classes=2,
                    classifier_size=32, denoiser=str(paper_files / "denoiser"), sigma=0.5, n0=4,
                    n=8, batch=8, device="cpu")
    pipe.check_image_shape((3, 64, 96))
    with pytest.raises(ValueError, match="do not fit the denoiser.*multiples of 2"):
        pipe.check_image_shape((3, 64, 95))
    with pytest.raises(ValueError, match="takes 3 channels"):
        pipe.check_image_shape((1, 64, 64))


def test_config_files_keep_refusing_typos_but_read_script_keys(tmp_path):
    path = tmp_path / "config.json"
    base = {"mode": "rs", "classifier": "c.pt", "skip": 5, "max": 10}
    path.write_text(json.dumps(base))
    assert PipelineConfig.from_file(path).classifier == ["c.pt"]
    path.write_text(json.dumps({**base, "classifer_size": 32}))
    with pytest.raises(ValueError, match="unknown configuration keys"):
        PipelineConfig.from_file(path)


BAD_OPTIONS = {
    "num-classes 0": (["--num-classes", "0"], "num_classes must be a positive integer"),
    "num-classes not an integer": (["--num-classes", "ten"], "invalid int value"),
    "classifier-size 0": (["--classifier-size", "0"], "classifier_size must be a positive"),
    "unknown interpolation": (["--interpolation", "lanczos"], "invalid choice"),
    "mean of the wrong length": (["--mean", "0.5"], "one value per input channel"),
    "std not positive": (["--std", "0.5", "0", "0.5"], "std must be positive"),
    "std not finite": (["--std", "nan", "1", "1"], "finite numbers"),
    "mean and std disagree": (["--mean", "0", "0", "0", "--std", "1"], "as many values"),
    "image-size 0": (["--image-size", "0"], "image_size must be a positive"),
    "image-size on cifar-like data": (["--dataset", "sample", "--image-size", "64"],
                                      "imagenet only"),
    "unknown timm model": (["--arch", "timm:no_such_net"], "timm has no model"),
    "unknown arch": (["--arch", "resnet5"], "unknown architecture"),
    "arch of the wrong shape": (["--arch", "resnet50"], "do not fit architecture 'resnet50'"),
    "empty arch": (["--arch", ""], "arch must name an architecture"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_every_new_option_validates_its_input(paper_files, tmp_path, capsys, case):
    extra, message = BAD_OPTIONS[case]
    argv = ["--dataset", "imagenet", "--data-dir", str(paper_files / "imagenet"), "--mode", "rs",
            "--classifier", str(paper_files / "vit.pth"), "--arch", VIT, "--num-classes", "2",
            "--classifier-size", "32", "--N0", "4", "--N", "8", "--device", "cpu",
            "--outfile", str(tmp_path / "out.tsv"), *extra]
    status, err = run_cli(argv, capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())
