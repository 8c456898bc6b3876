"""Datasets as float images in [0, 1], shape (C, H, W), from local files only.

``get_dataset(name, split, root=None)`` with ``name`` one of:

* ``"fashion-mnist"``: IDX files (gzip or plain), default folder
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
* ``"cifar10"``: a torchvision-format folder (``cifar-10-batches-py``), default
  ``$CIFAR10_DIR`` or ``./data/cifar10``;
* ``"imagenet"``: an ImageFolder with ``train/`` and ``val/``, default ``$IMAGENET_DIR``
  (as in Cohen et al.'s code); val images are resized to 256 and centre-cropped to 224.
  ``image_size`` S of 224 and above: short side resized to max(S, 256), centre-cropped
  to S; below 224 (:data:`WHOLE_IMAGE_BELOW`): the whole image downsampled to S x S, as
  ImageNet 32x32 / 64x64 are made (Chrabaszcz et al. 2017), not a crop;
* ``"sample"``: 100 Fashion-MNIST test images bundled with the package.

Nothing is downloaded: a missing folder raises FileNotFoundError saying what was
looked for and how to get it; an ImageNet folder holding a link to a directory, or an
image-named entry that is not a regular file (a FIFO), is refused before any image is
read (:func:`check_image_folder`), and an image whose header claims more pixels than
PIL's ``MAX_IMAGE_PIXELS`` raises ValueError naming it when read (:func:`load_image`);
a CIFAR-10 file that is missing or fails torchvision's MD5 check is named in a
FileNotFoundError or ValueError. :data:`DATASET_INFO` holds
each dataset's class count, image shape and normalisation constants, the one table the
rest of the package reads.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from denoised_drs.atomic_file import atomic_write
from denoised_drs.errors import first_line

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

SPLITS = ("train", "test")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
SAMPLE_PATH = Path(__file__).parent / "sample" / "fashion_mnist_test_sample.npz"
SAMPLE_EVERY = 100
"""The bundled sample holds Fashion-MNIST test images 0, 100, 200, ..., 9900."""
WHOLE_IMAGE_BELOW = 224
"""ImageNet image sizes below this are whole images downsampled (ImageNet 64x64 style);
from it up, the short side is resized to max(S, 256) and the centre S x S cropped."""


@dataclass(frozen=True)
class DatasetInfo:
    """The facts about a dataset that models and training need, in one place.

    ``image_shape`` is (C, H, W) as :func:`get_dataset` serves the images (ImageNet at
    its default size); ``mean`` / ``std`` are the per-channel normalisation constants
    of its classifiers (the CIFAR-10 and ImageNet values are Cohen et al.'s).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.image_shape[1], self.image_shape[2]


_FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
DATASET_INFO: Mapping[str, DatasetInfo] = MappingProxyType({
    info.name: info
    for info in (
        DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        DatasetInfo("imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        DatasetInfo("fashion-mnist", 10, (1, 28, 28), *_FASHION_MNIST_STATS),
        # The bundled sample is 100 Fashion-MNIST test images.
        DatasetInfo("sample", 10, (1, 28, 28), *_FASHION_MNIST_STATS),
    )
})
DATASETS = tuple(DATASET_INFO)

# IDX type codes (http://yann.lecun.com/exdb/mnist/): code -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or plain) into a numpy array.

    Header: two zero bytes, a type code, the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes; the data follows in C order. Raises ValueError if the
    header is malformed, the data length does not match it, or a gzip file is
    truncated or damaged.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as error:  # truncated or damaged
            raise ValueError(f"{path} is a truncated or damaged gzip file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises {shape} ({expected} bytes of data), "
            f"found {len(raw) - header} bytes"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {folder}; install the Debian package "
        f"(apt-get install dataset-fashion-mnist) or pass the folder holding the IDX files"
    )


def load_fashion_mnist_arrays(
    split: str, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as (images (N, 28, 28), int64 labels (N,)), as stored.

    The images keep the IDX file's type (uint8 for the official files);
    :class:`ImageArrayDataset` checks it.
    """
    _check_split(split)
    folder = _fashion_mnist_folder(root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {folder} not found; install it with "
            f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}) "
            f"or pass the folder holding the IDX files"
        )
    image_stem, label_stem = _FASHION_FILES[split]
    images = read_idx(_find_idx(folder, image_stem))
    label_file = _find_idx(folder, label_stem)
    labels = read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, "
            f"labels {labels.shape}"
        )
    try:
        return images, _checked_labels(labels, DATASET_INFO["fashion-mnist"].num_classes)
    except ValueError as error:
        raise ValueError(f"{label_file}: {error}") from None


def _checked_labels(labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """``labels`` as int64, or ValueError unless they are integers in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if num_classes is not None and labels.size and not (
        labels.min() >= 0 and labels.max() < num_classes
    ):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"{bad.size} label(s) lie outside [0, {num_classes}), e.g. {int(bad[0])}"
        )
    return labels.astype(np.int64)


def _checked_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 pixels (0..255) as they are, floats in [0, 1] as float32; others refused."""
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype.kind != "f":
        raise ValueError(
            f"images must be uint8 (0..255) or floats in [0, 1], got {images.dtype}"
        )
    if not np.isfinite(images).all():
        raise ValueError("float images hold NaN or infinite values")
    if images.size and not (images.min() >= 0 and images.max() <= 1):
        raise ValueError(
            f"float images must lie in [0, 1] (pixel values, not 0..255 or normalised), "
            f"got values in [{images.min()}, {images.max()}]"
        )
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))


class ImageArrayDataset(Dataset):
    """Images held in memory, served as float tensors (C, H, W) in [0, 1] with int labels.

    ``images`` are uint8 (0..255, divided by 255 when served) or floats in [0, 1]
    (served as they are, in float32); any other type, and floats outside [0, 1] or
    not finite, raise ValueError. Labels must be integers, in [0, num_classes) when
    ``num_classes`` is given. ``indices`` records each image's index in its source
    split (for the sample: its index in the Fashion-MNIST test set).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        num_classes: int | None = None,
    ) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images (N, [C,] H, W) and N labels, "
                f"got {images.shape} and {labels.shape}"
            )
        if images.shape[1] not in (1, 3) and images.shape[3] in (1, 3):
            raise ValueError(
                f"images of shape {images.shape} look channels-last; store them as (N, C, H, W)"
            )
        self.images = _checked_pixels(images)
        self.labels = torch.from_numpy(_checked_labels(labels, num_classes))
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if image.dtype == torch.uint8:
            return image.float().div_(255.0), int(self.labels[i])
        return image.clone(), int(self.labels[i])


def fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> ImageArrayDataset:
    """Fashion-MNIST ``"train"`` (60,000) or ``"test"`` (10,000) images (1, 28, 28)."""
    images, labels = load_fashion_mnist_arrays(split, root)
    try:
        return ImageArrayDataset(images, labels)
    except ValueError as error:
        raise ValueError(
            f"Fashion-MNIST {split} images in {_fashion_mnist_folder(root)}: {error}"
        ) from None


def make_sample(
    out: str | os.PathLike = SAMPLE_PATH,
    root: str | os.PathLike | None = None,
    every: int = SAMPLE_EVERY,
) -> Path:
    """(Re)create the bundled sample: every ``every``-th Fashion-MNIST test image.

    Writes a compressed ``.npz`` with ``images`` (uint8, N x 28 x 28), ``labels``
    (int64) and ``indices`` (their positions in the test set).
    """
    images, labels = load_fashion_mnist_arrays("test", root)
    indices = np.arange(0, len(labels), every)
    out = Path(out)
    with atomic_write(out) as stream:
        np.savez_compressed(stream, images=images[indices], labels=labels[indices], indices=indices)
    return out


def load_sample(path: str | os.PathLike | None = None) -> ImageArrayDataset:
    """The bundled Fashion-MNIST test sample (100 images, test indices 0, 100, ..., 9900).

    Meant for smoke tests and examples; it is a test-set subset, so never a
    measure of generalisation when a model is also trained on it.
    """
    bundled = path is None
    path = Path(path or SAMPLE_PATH)
    if not path.is_file():
        hint = (
            "recreate the bundled one with `python -c 'from denoised_drs.data import make_sample; "
            "make_sample()'`"
            if bundled
            else "make one with denoised_drs.data.make_sample(path)"
        )
        raise FileNotFoundError(f"sample file {path} not found; {hint}")
    try:
        with np.load(path) as arrays:
            images, labels, indices = (arrays[k] for k in ("images", "labels", "indices"))
    except (ValueError, OSError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
            zlib.error) as error:
        # np.load's own message for a non-npz file talks about allow_pickle; a
        # truncated or damaged archive raises BadZipFile, zlib.error or EOFError.
        detail = error.args[0] if isinstance(error, KeyError) else "not a readable .npz archive"
        raise ValueError(
            f"{path} is not a sample file (an .npz with images, labels and indices): {detail}"
        ) from None
    try:
        return ImageArrayDataset(images, labels, indices, DATASET_INFO["sample"].num_classes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def cifar10(
    split: str = "test", root: str | os.PathLike | None = None, augment: bool | None = None
) -> Dataset:
    """CIFAR-10 from a local torchvision-format folder; train split gets crop+flip by default."""
    from torchvision import datasets, transforms

    _check_split(split)
    folder = _cifar10_folder(root)
    if not (folder / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 not found: expected {folder / 'cifar-10-batches-py'} (the python "
            f"version from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, "
            f"extracted there); pass its parent folder as root or set CIFAR10_DIR"
        )
    augment = split == "train" if augment is None else augment
    steps = (
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    )
    try:
        return datasets.CIFAR10(
            str(folder),
            train=split == "train",
            download=False,
            transform=transforms.Compose([*steps, transforms.ToTensor()]),
        )
    except RuntimeError:  # torchvision's "not found or corrupted ... use download=True"
        _check_cifar10_files(folder / "cifar-10-batches-py")
        raise


def _check_cifar10_files(batches: Path) -> None:
    """FileNotFoundError / ValueError naming the first CIFAR-10 file that is missing or
    whose MD5 is not the one torchvision expects (its ``train_list``, ``test_list`` and
    ``meta``: every file, whichever split is read, as torchvision checks them)."""
    from torchvision.datasets import CIFAR10

    expected = [*CIFAR10.train_list, *CIFAR10.test_list,
                (CIFAR10.meta["filename"], CIFAR10.meta["md5"])]
    for name, md5 in expected:
        path = batches / name
        if not path.is_file():
            raise FileNotFoundError(
                f"CIFAR-10 file {path} is missing; extract cifar-10-python.tar.gz there again"
            )
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != md5:
            raise ValueError(
                f"CIFAR-10 file {path} is damaged: its MD5 is {digest.hexdigest()}, the "
                f"official file's {md5}; extract cifar-10-python.tar.gz there again"
            )


def imagenet(
    split: str = "test",
    root: str | os.PathLike | None = None,
    augment: bool | None = None,
    image_size: int = 224,
) -> Dataset:
    """ImageNet from a local ImageFolder (``train/``, ``val/``; split ``"test"`` reads ``val/``).

    How an image becomes S x S (S = ``image_size``):

    * S >= 224 (:data:`WHOLE_IMAGE_BELOW`): val: short side resized to max(S, 256)
      (bilinear), centre crop S; at 224 this is Cohen et al.'s and Carlini et al.'s
      256 -> 224 (Carlini et al. give that 224 crop to the 256x256 diffusion UNet).
      Train: random resized crop S and horizontal flip.
    * S < 224: the whole image resized to S x S with a box filter (PIL's ``BOX``), no
      crop and the aspect ratio not kept: how Chrabaszcz et al. (2017) made ImageNet
      32x32 and 64x64, the data of improved-diffusion's ImageNet-64 models. A centre
      crop of S pixels would show a small part of the object at full resolution
      instead. Train: the same and a horizontal flip.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    from torchvision import datasets, transforms

    _check_split(split)
    base = _imagenet_folder(root)
    sub = "train" if split == "train" else "val"
    if not base or not (Path(base) / sub).is_dir():
        where = Path(base) / sub if base else "$IMAGENET_DIR/" + sub
        raise FileNotFoundError(
            f"ImageNet {sub} folder not found at {where}; ImageNet cannot be downloaded "
            f"automatically: get ILSVRC2012 from https://image-net.org, arrange it as "
            f"ImageFolder class sub-folders, and pass root or set IMAGENET_DIR"
        )
    augment = split == "train" if augment is None else augment
    if image_size < WHOLE_IMAGE_BELOW:
        steps = [transforms.Resize((image_size, image_size),
                                   interpolation=transforms.InterpolationMode.BOX)]
        steps += [transforms.RandomHorizontalFlip()] if augment else []
    elif augment:
        steps = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(max(image_size, 256)), transforms.CenterCrop(image_size)]
    folder = Path(base) / sub
    check_image_folder(folder)
    return datasets.ImageFolder(
        str(folder),
        transform=transforms.Compose([*steps, transforms.ToTensor()]),
        loader=load_image,
    )


def check_image_folder(folder: str | os.PathLike) -> None:
    """Refuse an ImageFolder whose class folders hold anything but plain directories and
    regular image files, before any image is opened.

    Raises ValueError naming the entry for a link to a directory (a class folder
    included) and for an image-named entry that is not a regular file (a FIFO, a
    device, a socket, a directory, a broken link); links to regular files are read.
    torchvision follows directory links, so a link back into the tree lists its images
    again and again (a loop: over a hundred rows for six images) and one out of it adds
    images from elsewhere; opening a FIFO waits for a writer for ever. Entries are
    checked by their type in the directory listing (or ``stat`` for a link), never opened.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    pending = [(Path(folder), True)]
    while pending:
        here, top = pending.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                # DirEntry's type tests use the directory listing (and a stat only for a
                # link): no file is opened.
                if entry.is_dir():  # following a link, as torchvision does
                    if entry.is_symlink():
                        raise ValueError(
                            f"{entry.path} is a link to a directory: an image folder follows "
                            "none (they repeat images or bring in others); put the folder "
                            "itself there"
                        )
                    pending.append((Path(entry.path), False))
                elif (not top  # torchvision reads class folders only, not files beside them
                      and has_file_allowed_extension(entry.name, IMG_EXTENSIONS)
                      and not entry.is_file()):
                    raise ValueError(
                        f"{entry.path} is not a regular file (a FIFO, device, socket or "
                        "broken link): remove it from the image folder"
                    )


def load_image(path: str | os.PathLike) -> PILImage:
    """The image file ``path`` as RGB, as torchvision's loader reads it, refusing a
    decompression bomb.

    An image whose header claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels raises
    ValueError naming the file before any pixel is decoded: PIL itself refuses only
    twice that many and merely warns (then decodes) in between.
    """
    from PIL import Image

    with open(path, "rb") as stream, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ValueError(
                f"{path} is refused as a possible decompression bomb: {first_line(error)}"
            ) from None
        return image.convert("RGB")


def _fashion_mnist_folder(root: str | os.PathLike | None) -> Path:
    return Path(root or FASHION_MNIST_DIR)


def _cifar10_folder(root: str | os.PathLike | None) -> Path:
    return Path(root or os.environ.get("CIFAR10_DIR", "data/cifar10"))


def _imagenet_folder(root: str | os.PathLike | None) -> str | os.PathLike | None:
    return root or os.environ.get("IMAGENET_DIR")


def data_source(name: str, root: str | os.PathLike | None = None) -> str:
    """Where ``get_dataset(name, split, root)`` reads from, as a resolved path.

    ``"bundled sample"`` for the sample shipped with the package; the folder (or
    sample file) with symbolic links resolved otherwise. Recorded beside results.
    """
    if name == "sample":
        return "bundled sample" if root is None else str(Path(root).resolve())
    folders = {"fashion-mnist": _fashion_mnist_folder, "cifar10": _cifar10_folder,
               "imagenet": _imagenet_folder}
    if name not in folders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    folder = folders[name](root)
    return "unset" if folder is None else str(Path(folder).resolve())


def check_image_size(name: str, image_size: int | None) -> None:
    """Refuse an ``image_size`` that dataset ``name`` cannot be prepared at (ImageNet: any size)."""
    if name == "imagenet" or image_size is None:
        return
    if name in DATASET_INFO and image_size != DATASET_INFO[name].image_shape[-1]:
        raise ValueError(
            "image_size applies to imagenet only; "
            f"{name} images are {DATASET_INFO[name].image_shape[-1]} px"
        )


def get_dataset(
    name: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Dataset ``name`` (see :data:`DATASETS`) and ``split`` (``"train"`` / ``"test"``).

    Items are ``(image, label)`` with ``image`` a float tensor (C, H, W) in [0, 1].
    ``"sample"`` serves its 100 test images for either split (smoke runs only);
    ``root`` is then the path of the ``.npz`` file. ``image_size`` (ImageNet only;
    other datasets accept just their own size) is the side of the square images.
    """
    _check_split(split)
    check_image_size(name, image_size)
    if name == "imagenet" and image_size is not None:
        return imagenet(split, root, image_size=image_size)
    if name == "fashion-mnist":
        return fashion_mnist(split, root)
    if name == "cifar10":
        return cifar10(split, root)
    if name == "imagenet":
        return imagenet(split, root)
    if name == "sample":
        return load_sample(root)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
