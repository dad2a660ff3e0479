"""CIFAR and MNIST-family loaders on tiny datasets written in the real on-disk formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from memexp.data import DATASETS
from memexp.data.augment import RandomCropFlip
from memexp.data.base import carve
from memexp.data.images import CIFAR10Config, CIFAR100Config, FashionMNISTConfig, MNISTConfig
from memexp.errors import ConfigValueError, DataNotFoundError

CPU = torch.device("cpu")


def write_cifar(root: Path, hundred: bool, per_batch: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR's python version: pickled dicts with a (N, 3072) uint8 'data' array (channel-major rows)."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"
    classes = 100 if hundred else 10
    train_names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    arrays: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for split, names in (("train", train_names), ("test", ["test"] if hundred else ["test_batch"])):
        for name in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, per_batch).tolist()
            with open(folder / name, "wb") as handle:
                pickle.dump({"data": data, label_key: labels}, handle)
            arrays[f"{split}_x"].append(data)
            arrays[f"{split}_y"].append(np.array(labels))
    meta_name, meta_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(folder / meta_name, "wb") as handle:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, handle)
    return {key: np.concatenate(value) for key, value in arrays.items()}


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format: big-endian magic (0x0803 images, 0x0801 labels), sizes, then raw bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())
    label_bytes = labels.astype(np.uint8).tobytes()
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + label_bytes)


@pytest.fixture
def skip_cifar_checksums(monkeypatch):
    # torchvision verifies the real archive's md5 sums; the fake batches cannot match them. Everything
    # else (the pickle parsing, the layout) is torchvision's real code.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_layout_labels_normalisation_and_test_split(tmp_path, skip_cifar_checksums, hundred):
    raw = write_cifar(tmp_path, hundred)
    cfg = (CIFAR100Config if hundred else CIFAR10Config)(root=str(tmp_path))
    bundle = DATASETS.build(cfg.name, cfg, CPU)
    assert bundle.spec.input_shape == (3, 32, 32) and bundle.spec.num_classes == (100 if hundred else 10)
    x_train, y_train = bundle.train
    x_test, y_test = bundle.test
    n_official = 6 if hundred else 30
    # The validation split is val_fraction = 0.1 of the official training split (seeded by split_seed).
    (train_ids,), (val_ids,) = carve((np.arange(n_official),), 0.1, 0, "data.val_fraction")
    assert x_train.shape == (len(train_ids), 3, 32, 32) and bundle.val[0].shape == (len(val_ids), 3, 32, 32)
    assert x_test.shape == (6, 3, 32, 32)
    # Independent float64 reference: channel c, row h, column w is byte c*1024 + h*32 + w of a row.
    all_pixels = raw["train_x"].reshape(n_official, 3, 32, 32).astype(np.float64) / 255
    pixels = all_pixels[train_ids]
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3), ddof=1)

    def normalised(x: np.ndarray) -> np.ndarray:
        return (x - mean[None, :, None, None]) / std[None, :, None, None]

    np.testing.assert_allclose(x_train.numpy(), normalised(pixels), rtol=0, atol=2e-5)
    np.testing.assert_allclose(bundle.val[0].numpy(), normalised(all_pixels[val_ids]), rtol=0, atol=2e-5)
    test_pixels = raw["test_x"].reshape(6, 3, 32, 32) / 255
    np.testing.assert_allclose(x_test.numpy(), normalised(test_pixels), rtol=0, atol=2e-5)
    assert y_train.tolist() == raw["train_y"][train_ids].tolist() and y_test.tolist() == raw["test_y"].tolist()
    # Augmentation pads with the normalised value of a black pixel.
    assert isinstance(bundle.augment, RandomCropFlip) and bundle.augment.padding == 4
    torch.testing.assert_close(bundle.augment.fill, torch.tensor(-mean / std, dtype=torch.float32))


def test_cifar_subset_and_validation_carved_from_train(tmp_path, skip_cifar_checksums):
    raw = write_cifar(tmp_path, hundred=False)
    cfg = CIFAR10Config(root=str(tmp_path), train_examples=20, val_fraction=0.25, augment=False, normalize=False)
    bundle = DATASETS.build("cifar10", cfg, CPU)
    assert bundle.train[0].shape[0] == 15 and bundle.val[0].shape[0] == 5 and bundle.augment is None
    first_20 = torch.from_numpy(raw["train_x"][:20].reshape(20, 3, 32, 32)).float() / 255
    together = torch.cat([bundle.train[0], bundle.val[0]])
    # Train and validation are a partition of the first 20 images; the test split is the official one.
    assert sorted(map(hash_image, together)) == sorted(map(hash_image, first_20))
    assert bundle.test[0].shape[0] == 6
    evaluation = bundle.eval_sets()
    assert [evaluation[split][0].shape[0] for split in ("train", "val", "test")] == [6, 5, 6]
    with pytest.raises(ConfigValueError, match="data.train_examples"):
        DATASETS.build("cifar10", CIFAR10Config(root=str(tmp_path), train_examples=31), CPU)


def hash_image(image: torch.Tensor) -> bytes:
    return (image * 255).round().to(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize(("config", "folder"), [(MNISTConfig, "MNIST"), (FashionMNISTConfig, "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, config, folder):
    rng = np.random.default_rng(1)
    train_images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test_images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    train_labels, test_labels = rng.integers(0, 10, 12), rng.integers(0, 10, 4)
    write_idx(tmp_path / folder / "raw", "train", train_images, train_labels)
    write_idx(tmp_path / folder / "raw", "t10k", test_images, test_labels)
    bundle = DATASETS.build(config().name, config(root=str(tmp_path)), CPU)
    assert bundle.spec.input_shape == (1, 28, 28) and bundle.augment is None  # no flips for digits by default
    (train_ids,), _ = carve((np.arange(12),), 0.1, 0, "data.val_fraction")
    pixels = train_images[train_ids].astype(np.float64) / 255
    expected = (pixels - pixels.mean()) / pixels.std(ddof=1)
    np.testing.assert_allclose(bundle.train[0][:, 0].numpy(), expected, rtol=0, atol=2e-5)
    assert bundle.train[1].tolist() == train_labels[train_ids].tolist()
    assert bundle.test[1].tolist() == test_labels.tolist()


@pytest.mark.parametrize(
    ("config", "where", "how"),
    [
        (CIFAR10Config, "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        (CIFAR100Config, "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
        (MNISTConfig, "MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        (FashionMNISTConfig, "FashionMNIST/raw", "fashion-mnist"),
    ],
)
def test_missing_data_names_the_folder_and_how_to_get_it(tmp_path, config, where, how):
    with pytest.raises(DataNotFoundError) as error:
        DATASETS.build(config().name, config(root=str(tmp_path / "empty")), CPU)
    message = str(error.value)
    assert str(tmp_path / "empty" / where) in message and how in message and "data.download=true" in message
    assert "\n" not in message
    assert not (tmp_path / "empty").exists()  # nothing written
