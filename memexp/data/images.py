"""CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST, read by torchvision's dataset classes from a local
root (``data.root``, default ``$MEMEXP_DATA`` or ``~/.cache/memexp``).

The whole dataset is decoded once into a float tensor on the training device (CIFAR-10: 600 MB as
float32), normalised per channel with the training split's own mean and std, and augmented on the
device in batch (random crop with padding, horizontal flip: :mod:`memexp.data.augment`), so a training
step never waits for a DataLoader. The held-out test split is the official test split; the validation
split is a fixed part (``val_fraction``) of the official training split, never trained on.

Nothing is downloaded unless ``data.download=true``; missing files stop the run before anything is
written, with one message naming the folder and how to fill it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memexp.data.augment import RandomCropFlip
from memexp.data.base import DATASETS, DataConfig, DataSpec, InMemoryClassification, carve, check_val_fraction
from memexp.errors import DataNotFoundError, require


@dataclass
class ImageDataConfig(DataConfig):
    root: str = "${paths.data_root}"
    download: bool = False  # use torchvision's downloader (needs a network)
    augment: bool = True  # master switch for the two below
    crop_padding: int = 4  # random crop of the image size from the image padded by this many pixels; 0: off
    hflip: bool = True
    normalize: bool = True  # per-channel mean/std of the training split
    train_examples: int = 0  # 0: all; N: the first N training examples (a fixed subset)
    val_fraction: float = 0.1  # the validation split: this part of the training split
    split_seed: int = 0

    def check(self) -> None:
        require(self.crop_padding >= 0, "crop_padding", self.crop_padding, "an integer >= 0 (0: no random crop)")
        require(self.train_examples >= 0, "train_examples", self.train_examples, "an integer >= 0 (0: all)")
        check_val_fraction(self.val_fraction)


@dataclass
class CIFAR10Config(ImageDataConfig):
    name: str = "cifar10"


@dataclass
class CIFAR100Config(ImageDataConfig):
    name: str = "cifar100"


@dataclass
class MNISTConfig(ImageDataConfig):
    name: str = "mnist"
    augment: bool = False  # flips change digits' meaning; crops are opt-in


@dataclass
class FashionMNISTConfig(ImageDataConfig):
    name: str = "fashion_mnist"
    augment: bool = False


@dataclass(frozen=True)
class TorchvisionSource:
    title: str
    class_name: str  # in torchvision.datasets
    folder: str  # where torchvision looks, relative to the root
    how_to_get: str  # the manual way to put the files there; {folder} and {root} are filled in
    num_classes: int


MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
SOURCES: dict[str, TorchvisionSource] = {
    "cifar10": TorchvisionSource(
        "CIFAR-10",
        "CIFAR10",
        "cifar-10-batches-py",
        "mkdir -p {root} && curl -L https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz | tar xz -C {root}",
        10,
    ),
    "cifar100": TorchvisionSource(
        "CIFAR-100",
        "CIFAR100",
        "cifar-100-python",
        "mkdir -p {root} && curl -L https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz | tar xz -C {root}",
        100,
    ),
    "mnist": TorchvisionSource(
        "MNIST",
        "MNIST",
        "MNIST/raw",
        "download the four .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/ and gunzip them into "
        f"{{folder}} ({MNIST_FILES})",
        10,
    ),
    "fashion_mnist": TorchvisionSource(
        "Fashion-MNIST",
        "FashionMNIST",
        "FashionMNIST/raw",
        "download the four .gz files from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ and gunzip "
        f"them into {{folder}} ({MNIST_FILES})",
        10,
    ),
}


def resolve_root(root: str) -> Path:
    return Path(root).expanduser()


def load_torchvision_split(name: str, root: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W, C) and labels as int64 (N,), through torchvision's own loader."""
    import torchvision.datasets

    source = SOURCES[name]
    dataset_class = getattr(torchvision.datasets, source.class_name)
    folder = root / source.folder
    try:
        dataset: Any = dataset_class(str(root), train=train, download=download)
    except Exception as error:  # noqa: BLE001 - torchvision raises RuntimeError (missing/corrupt) or URLError
        how = source.how_to_get.format(root=root, folder=folder)
        problem = f"download failed ({type(error).__name__}: {error})" if download else "not found or corrupted"
        raise DataNotFoundError(
            f"{source.title} {problem} in {folder}. To get it: {how}; "
            f"or, with a network, add data.download=true (set data.root or $MEMEXP_DATA to use another folder)"
        ) from None
    images = np.asarray(dataset.data, dtype=np.uint8)
    if images.ndim == 3:  # MNIST family: (N, H, W) grey-scale
        images = images[..., None]
    return images, np.asarray(dataset.targets, dtype=np.int64)


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of (N, C, H, W) images, in float64 for accuracy on 50k images."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1).float()


def to_tensor(images: np.ndarray) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], like torchvision's ToTensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def build_image_dataset(cfg: ImageDataConfig, device: torch.device) -> InMemoryClassification:
    source = SOURCES[cfg.name]
    root = resolve_root(cfg.root)
    train_images, train_labels = load_torchvision_split(cfg.name, root, train=True, download=cfg.download)
    if cfg.train_examples:
        require(
            cfg.train_examples <= len(train_labels),
            "data.train_examples",
            cfg.train_examples,
            f"an integer <= {len(train_labels)} (the training split's size), or 0 for all",
        )
        train_images, train_labels = train_images[: cfg.train_examples], train_labels[: cfg.train_examples]
    train, val = carve((train_images, train_labels), cfg.val_fraction, cfg.split_seed, "data.val_fraction")
    test = load_torchvision_split(cfg.name, root, train=False, download=cfg.download)
    return image_bundle(cfg.name, source.num_classes, train, val, test, cfg, device)


def image_bundle(
    name: str,
    num_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    cfg: Any,
    device: torch.device,
) -> InMemoryClassification:
    """uint8 (N, H, W, C) images and int64 labels of the three splits -> device tensors, normalised
    per channel with the training data's statistics, with the batch augmentation ``cfg`` asks for
    (``normalize``, ``augment``, ``crop_padding``, ``hflip``)."""
    x_train = to_tensor(train[0])
    channels, height, width = x_train.shape[1:]
    mean, std = torch.zeros(channels), torch.ones(channels)
    if cfg.normalize:
        mean, std = channel_stats(x_train)
        std = std.clamp_min(1e-6)
    fill = -mean / std  # the value of a black (0) padding pixel after normalisation

    def prepare(x: Tensor, labels: np.ndarray) -> tuple[Tensor, Tensor]:
        x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
        return x.to(device), torch.from_numpy(labels).to(device)

    augment = None
    if cfg.augment and (cfg.crop_padding > 0 or cfg.hflip):
        augment = RandomCropFlip(cfg.crop_padding, cfg.hflip, fill.to(device))
    spec = DataSpec(name=name, task="classification", input_shape=(channels, height, width), num_classes=num_classes)
    return InMemoryClassification(
        spec,
        train=prepare(x_train, train[1]),
        val=prepare(to_tensor(val[0]), val[1]),
        test=prepare(to_tensor(test[0]), test[1]),
        augment=augment,
        eval_seed=cfg.split_seed,
    )


DATASETS.register("cifar10", config=CIFAR10Config)(build_image_dataset)
DATASETS.register("cifar100", config=CIFAR100Config)(build_image_dataset)
DATASETS.register("mnist", config=MNISTConfig)(build_image_dataset)
DATASETS.register("fashion_mnist", config=FashionMNISTConfig)(build_image_dataset)
