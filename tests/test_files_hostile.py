"""Hostile files and folders (issue 23): each refused with one clear line, never a hang,
a traceback of the reader's own exceptions, or silently wrong rows."""

import json
import os
import pickle
import shutil
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_denoiser
from PIL import Image

from denoised_drs.checkpoint_file import HASH_KEY, load_weights_only
from denoised_drs.data import get_dataset
from denoised_drs.diffusion.loading import load_denoiser_network
from denoised_drs.models import ClassifierSpec, create_model, load_classifier
from denoised_drs.models.loading import classifier_checkpoint


def image_folder(root: Path) -> Path:
    """An ImageNet-style root: ``val/`` with two classes of three tiny images (PNG, JPEG)."""
    rng = np.random.default_rng(0)
    for label in range(2):
        folder = root / "val" / f"class{label}"
        folder.mkdir(parents=True)
        for k, suffix in enumerate((".png", ".JPEG", ".jpg")):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"image{k}{suffix}")
    return root


def within(seconds: float, function, *args):
    """``function(*args)``'s result or exception, failing the test if it takes longer
    than ``seconds`` (a hang: the thread is a daemon, left behind)."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung for more than {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_plain_image_folder_lists_each_image_once(tmp_path):
    dataset = get_dataset("imagenet", "test", image_folder(tmp_path), image_size=8)
    assert len(dataset) == 6
    assert [label for _, label in dataset.samples] == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("target", ["parent", "self", "sibling", "outside"])
def test_directory_links_in_an_image_folder_are_refused(tmp_path, target):
    root = image_folder(tmp_path / "data")
    class0 = root / "val" / "class0"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "extra.png")
    link_target = {"parent": root / "val", "self": class0, "sibling": root / "val" / "class1",
                   "outside": outside}[target]
    (class0 / "link").symlink_to(link_target, target_is_directory=True)
    # torchvision follows links: 126 / 246 rows for these 6 images, or a copied class.
    with pytest.raises(ValueError, match=r"class0[/\\]link is a link to a directory") as error:
        within(20, get_dataset, "imagenet", "test", root, 8)
    assert "\n" not in str(error.value)


def test_a_class_folder_that_is_a_link_is_refused(tmp_path):
    root = image_folder(tmp_path / "data")
    (root / "val" / "class2").symlink_to(root / "val", target_is_directory=True)
    with pytest.raises(ValueError, match="link to a directory"):
        within(20, get_dataset, "imagenet", "test", root, 8)


def test_a_link_to_an_image_file_is_read(tmp_path):
    root = image_folder(tmp_path / "data")
    Image.new("RGB", (8, 8)).save(tmp_path / "extra.png")
    (root / "val" / "class1" / "extra.png").symlink_to(tmp_path / "extra.png")
    dataset = get_dataset("imagenet", "test", root, image_size=8)
    assert len(dataset) == 7
    assert dataset[6][0].shape == (3, 8, 8)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("linked", [False, True])
def test_a_fifo_named_like_an_image_is_refused_without_opening_it(tmp_path, linked):
    root = image_folder(tmp_path / "data")
    fifo = root / "val" / "class1" / "trap.JPEG"
    if linked:  # a link named like an image, to a FIFO elsewhere
        os.mkfifo(tmp_path / "pipe")
        fifo.symlink_to(tmp_path / "pipe")
    else:
        os.mkfifo(fifo)
    # Opening a FIFO waits for a writer: reading it as an image hangs the run.
    with pytest.raises(ValueError, match=r"trap\.JPEG is not a regular file") as error:
        within(20, lambda: get_dataset("imagenet", "test", root, 8)[5])
    assert "\n" not in str(error.value)


def test_a_broken_link_named_like_an_image_is_refused(tmp_path):
    root = image_folder(tmp_path / "data")
    (root / "val" / "class1" / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"gone\.png is not a regular file"):
        get_dataset("imagenet", "test", root, image_size=8)


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG claiming width x height RGB pixels: the signature, an
    IHDR chunk and an empty IDAT (no pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")


@pytest.mark.parametrize("pixels_over_limit", [1.5, 100.0])
def test_a_decompression_bomb_header_is_refused_naming_the_file(tmp_path, pixels_over_limit):
    # Above MAX_IMAGE_PIXELS PIL only warns (and would decode); above twice it raises.
    side = int((Image.MAX_IMAGE_PIXELS * pixels_over_limit) ** 0.5) + 1
    root = image_folder(tmp_path / "data")
    bomb = root / "val" / "class1" / "bomb.png"
    bomb.write_bytes(png_header(side, side))
    dataset = get_dataset("imagenet", "test", root, image_size=8)
    index = [path for path, _ in dataset.samples].index(str(bomb))
    with pytest.raises(ValueError, match=r"bomb\.png.*decompression bomb") as error:
        within(20, dataset.__getitem__, index)
    assert "\n" not in str(error.value)


# Item 11: every metadata field of every file read is checked, giving one line.

def one_line_error(function, *args, match: str, **kwargs) -> str:
    """The message of the ValueError ``function`` raises: one line, matching ``match``."""
    with pytest.raises(ValueError, match=match) as error:
        function(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def classifier_payload():
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch="l", sigma=0.25)
    torch.manual_seed(0)
    return classifier_checkpoint(create_model(spec.arch, **spec.model_options()), spec)


CLASSIFIER_FIELDS = [
    ("version", "x"), ("version", 1.5), ("version", True), ("version", 0), ("version", None),
    ("num_classes", "10"), ("num_classes", -3), ("num_classes", 10.5), ("num_classes", True),
    ("num_classes", 0), ("arch", 5), ("arch", ""), ("arch", None), ("input_size", "big"),
    ("input_size", [0, -1]), ("input_size", [28]), ("input_size", 28), ("input_size", [28.5, 28]),
    ("in_channels", "1"), ("in_channels", 0), ("mean", "abc"), ("mean", [float("nan")]),
    ("mean", [True]), ("std", [0.0]), ("std", [-1.0]), ("std", 0.5), ("branch", 5),
    ("interpolation", 5), ("sigma", "x"), ("sigma", -1.0), ("sigma", float("inf")),
    ("dataset", 5), ("normalization", ["a"]), ("partition", 3), ("training", "x"),
]


@pytest.mark.parametrize(("field", "value"), CLASSIFIER_FIELDS,
                         ids=[f"{f}={v!r}" for f, v in CLASSIFIER_FIELDS])
def test_classifier_checkpoint_fields_of_the_wrong_type_or_range_are_refused(
    tmp_path, classifier_payload, field, value
):
    path = tmp_path / "classifier.pt"
    torch.save({**classifier_payload, field: value}, path)
    message = one_line_error(load_classifier, path, match=f"{field} must")
    assert str(path) in message


@pytest.mark.parametrize("field", ["arch", "num_classes", "in_channels", "input_size", "mean",
                                   "std"])
def test_classifier_checkpoints_missing_a_field_are_refused(tmp_path, classifier_payload, field):
    path = tmp_path / "classifier.pt"
    torch.save({k: v for k, v in classifier_payload.items() if k != field}, path)
    assert str(path) in one_line_error(load_classifier, path, match=f"no {field!r}")


def test_a_foreign_checkpoint_recording_a_non_name_as_arch_is_refused(tmp_path,
                                                                      classifier_payload):
    path = tmp_path / "foreign.pt"
    torch.save({"arch": 5, "state_dict": classifier_payload["state_dict"]}, path)
    one_line_error(load_classifier, path, arch="small_cnn", dataset="fashion-mnist",
                   match=f"{path} records arch 5")


def test_a_valid_classifier_checkpoint_still_loads(tmp_path, classifier_payload):
    path = tmp_path / "classifier.pt"
    torch.save(classifier_payload, path)
    assert load_classifier(path)(torch.rand(2, 1, 28, 14)).shape == (2, 10)


@pytest.fixture(scope="module")
def denoiser_payload(tmp_path_factory):
    path = write_denoiser(tmp_path_factory.mktemp("denoiser") / "denoiser.pt", image_size=8)
    return torch.load(path, weights_only=True)


DENOISER_CASES = [
    ("flags", ..., "no 'flags'"), ("num_timesteps", ..., "no 'num_timesteps'"),
    ("state_dict", ..., "no 'state_dict'"), ("schedule", ..., "no 'schedule'"),
    ("rescale_timesteps", ..., "no 'rescale_timesteps'"),
    ("flags", [1, 2], "flags must be"), ("flags", {"num_channels": "32"}, "num_channels"),
    ("flags", {"bogus": 1}, "bogus"), ("flags", {"class_cond": True}, "class_cond"),
    ("num_timesteps", "1000", "num_timesteps"), ("num_timesteps", 0, "num_timesteps"),
    ("num_timesteps", 1.5, "num_timesteps"), ("num_timesteps", 10**12, "num_timesteps"),
    ("schedule", "weird", "schedule"), ("schedule", 3, "schedule"),
    ("rescale_timesteps", "yes", "rescale_timesteps"), ("state_dict", [1], "state_dict"),
    ("state_dict", {"a": 1}, "state_dict"), ("extra", 5, "extra"),
]


@pytest.mark.parametrize(("field", "value", "match"), DENOISER_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in DENOISER_CASES])
def test_denoiser_checkpoints_with_missing_or_bad_fields_are_refused(
    tmp_path, denoiser_payload, field, value, match
):
    payload = {k: v for k, v in denoiser_payload.items() if k != field and k != HASH_KEY}
    if value is not ...:
        payload[field] = value if field != "flags" or not isinstance(value, dict) else {
            **denoiser_payload["flags"], **value}
    path = tmp_path / "denoiser.pt"
    torch.save(payload, path)
    message = one_line_error(load_denoiser_network, path, match=match)
    assert str(path) in message


def test_a_valid_denoiser_checkpoint_still_loads(tmp_path, denoiser_payload):
    path = tmp_path / "denoiser.pt"
    torch.save(denoiser_payload, path)
    assert load_denoiser_network(path).alphas_cumprod.shape == (1000,)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(folder)
    DDPMScheduler().save_pretrained(folder)
    return folder


def edit_json(name: str, **changes):
    """An edit of a diffusers folder: ``changes`` applied to its JSON file ``name``
    (a value of ``...`` deletes the key)."""

    def edit(folder: Path) -> None:
        values = json.loads((folder / name).read_text())
        for key, value in changes.items():
            values.pop(key) if value is ... else values.__setitem__(key, value)
        (folder / name).write_text(json.dumps(values))

    return edit


def write_text(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def remove_weights(folder: Path) -> None:
    (folder / "diffusion_pytorch_model.safetensors").unlink()


DIFFUSERS_CASES = {
    "config not JSON": (write_text("config.json", "{nope"), "config.json"),
    "config a list": (write_text("config.json", "[1]"), "config.json"),
    "config empty": (write_text("config.json", "{}"), "no 'in_channels'"),
    "in_channels a string": (edit_json("config.json", in_channels="3"), "in_channels"),
    "in_channels negative": (edit_json("config.json", in_channels=-3), "in_channels"),
    "block_out_channels missing": (edit_json("config.json", block_out_channels=...),
                                   "block_out_channels"),
    "block_out_channels a string": (edit_json("config.json", block_out_channels="big"),
                                    "block_out_channels"),
    "layers_per_block fractional": (edit_json("config.json", layers_per_block=1.5),
                                    "layers_per_block"),
    "sample_size a string": (edit_json("config.json", sample_size="x"), "sample_size"),
    "down_block_types unknown": (edit_json("config.json", down_block_types=["X", "Y"]),
                                 "down_block_types|X"),
    "another class": (edit_json("config.json", _class_name="Foo"), "Foo"),
    "no weights": (remove_weights, "no weights"),
    "damaged weights": (write_text("diffusion_pytorch_model.safetensors", "junk"), "weights"),
    "scheduler not JSON": (write_text("scheduler_config.json", "nope"), "scheduler_config"),
    "scheduler empty": (write_text("scheduler_config.json", "{}"), "no 'num_train_timesteps'"),
    "timesteps a string": (edit_json("scheduler_config.json", num_train_timesteps="1000"),
                           "num_train_timesteps"),
    "timesteps negative": (edit_json("scheduler_config.json", num_train_timesteps=-5),
                           "num_train_timesteps"),
    "timesteps huge": (edit_json("scheduler_config.json", num_train_timesteps=10**12),
                       "num_train_timesteps"),
    "unknown beta schedule": (edit_json("scheduler_config.json", beta_schedule="weird"),
                              "beta_schedule"),
    "beta_end a string": (edit_json("scheduler_config.json", beta_end="x"), "beta_end"),
    "beta_end above 1": (edit_json("scheduler_config.json", beta_end=2.0), "beta_end"),
    "unknown prediction type": (edit_json("scheduler_config.json", prediction_type="noise"),
                                "prediction_type"),
    "prediction type a number": (edit_json("scheduler_config.json", prediction_type=5),
                                 "prediction_type"),
}


@pytest.mark.parametrize("case", DIFFUSERS_CASES)
def test_bad_diffusers_folders_are_refused_in_one_line(tmp_path, diffusers_folder, case):
    edit, match = DIFFUSERS_CASES[case]
    folder = tmp_path / "folder"
    shutil.copytree(diffusers_folder, folder)
    edit(folder)
    message = one_line_error(load_denoiser_network, folder, match=match)
    assert str(folder) in message


def test_a_valid_diffusers_folder_still_loads(tmp_path, diffusers_folder):
    folder = tmp_path / "folder"
    shutil.copytree(diffusers_folder, folder)
    # An old scheduler config (diffusers 0.1, google/ddpm-*) names no prediction type.
    edit_json("scheduler_config.json", prediction_type=...)(folder)
    network = load_denoiser_network(folder)
    assert network.prediction_type == "epsilon"
    assert network.alphas_cumprod.shape == (1000,)


class Thing:
    """Any class: a pickle of one is no checkpoint."""


@pytest.mark.parametrize("kind", ["torch.save", "pickle", "os.system"])
def test_a_pickle_of_arbitrary_objects_is_no_checkpoint_and_never_unpickled(tmp_path, kind):
    path = tmp_path / "model.pt"
    if kind == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "thing": Thing()}, path)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"thing": Thing()}, protocol=4))
    else:  # would run a shell command if unpickled
        path.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")
    for load in (load_weights_only, lambda p: load_classifier(p, arch="small_cnn"),
                 load_denoiser_network):
        message = one_line_error(load, path, match=f"{path} is not a .*this library reads")
        assert "weights_only" not in message.replace("weights-only", "")
    assert not (tmp_path / "ran").exists()


PROCESSOR_CASES = {
    "size a string": ({"size": "big"}, "image size"),
    "size negative": ({"size": {"height": -1, "width": 32}}, "image size"),
    "size a string in a dict": ({"size": {"height": "32", "width": 32}}, "image size"),
    "mean a string": ({"image_mean": "abc"}, "image_mean"),
    "std zero": ({"image_std": [0.0, 0.0, 0.0]}, "std"),
    "mean a boolean": ({"image_mean": True}, "image_mean"),
}


@pytest.mark.parametrize("case", PROCESSOR_CASES)
def test_bad_preprocessor_configs_of_classifier_folders_are_refused(tmp_path, case):
    pytest.importorskip("transformers")
    from test_classifier_formats import write_vit_folder

    folder = write_vit_folder(tmp_path / "vit", seed=0)
    changes, match = PROCESSOR_CASES[case]
    edit_json("preprocessor_config.json", **changes)(folder)
    assert str(folder) in one_line_error(load_classifier, folder, match=match)


@pytest.mark.parametrize("text", ["hello", "abc", "1,2,3", "not a checkpoint\n"])
def test_a_text_file_is_no_checkpoint_whatever_its_first_bytes(tmp_path, text):
    from denoised_drs.models import load_classifier

    path = tmp_path / "t.pt"
    path.write_text(text)
    with pytest.raises(ValueError, match="is not a checkpoint this library reads: it is "
                                         "neither a PyTorch file"):
        load_classifier(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty, not a checkpoint"):
        load_classifier(path)
