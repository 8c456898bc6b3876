"""Shared fixtures: tiny checkpoints written the way users' own files are."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from denoised_drs.diffusion import openai_unet
from denoised_drs.diffusion.checkpoint import save_denoiser_checkpoint
from denoised_drs.models import ClassifierSpec, create_model, save_classifier

TINY_DENOISER_FLAGS = {
    "image_size": 28,
    "in_channels": 1,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "",
    "learn_sigma": False,
    "use_scale_shift_norm": True,
    "dropout": 0.0,
}


def write_classifier(path: Path, branch: str, seed: int) -> Path:
    torch.manual_seed(seed)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch=branch, sigma=0.25)
    save_classifier(path, create_model(spec.arch, **spec.model_options()).eval(), spec)
    return path


def write_denoiser(path: Path, image_size: int = 28, seed: int = 0, **flags) -> Path:
    torch.manual_seed(seed)
    flags = {**TINY_DENOISER_FLAGS, "image_size": image_size, **flags}
    save_denoiser_checkpoint(path, openai_unet(**flags), flags, "cosine", 1000)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Random-weight Fashion-MNIST-shaped classifiers (full, l, r) and a tiny denoiser."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "full": str(write_classifier(root / "full.pt", "full", 0)),
        "l": str(write_classifier(root / "l.pt", "l", 1)),
        "r": str(write_classifier(root / "r.pt", "r", 2)),
        "denoiser": str(write_denoiser(root / "denoiser.pt")),
        # Downsamples by 8: takes 32-px images, not 28-px ones (28 is no multiple of 8).
        "denoiser_deep": str(write_denoiser(root / "denoiser_deep.pt", image_size=32,
                                            channel_mult="1,1,1,1")),
    }


@pytest.fixture
def compile_calls(monkeypatch) -> SimpleNamespace:
    """``torch.compile`` replaced by a recording one whose backend runs the traced graphs
    eagerly (inductor would spend a minute compiling): ``.modules`` holds what was
    compiled, ``.graphs`` each graph traced."""
    calls = SimpleNamespace(modules=[], graphs=[])
    real_compile = torch.compile

    def count_graphs(graph, example_inputs):
        calls.graphs.append(graph)
        return graph.forward

    def compile_eagerly(module, **options):
        calls.modules.append(module)
        return real_compile(module, backend=count_graphs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    return calls
