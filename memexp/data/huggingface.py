"""Any Hugging Face dataset through ``datasets.load_dataset``: images (``data=hf_images``) or text for
language modelling (``data=hf_text``).

``data.path`` is what ``load_dataset`` takes first: a local folder, a builder name for local files
(``parquet``, ``arrow``, ``json``, ``csv``, ``text``, ``imagefolder``) together with
``data.data_files``, or a Hub name (which needs a network the first time and is then cached by
``datasets`` itself). Images are decoded once into device tensors like the torchvision datasets
(same normalisation and batch augmentation); text goes through the same tokenizers and memory-mapped
token cache as ``text_file``. The held-out test split is ``test_split`` when given, else a fixed random
part of the training split (images, ``test_fraction``) or the tail of the token stream (text); the
validation split is carved out of what remains for training (``val_fraction``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memexp.data.base import DATASETS, DataConfig, InMemoryClassification, carve, check_val_fraction
from memexp.data.images import image_bundle
from memexp.data.text import TextDataConfig, TokenBlocks, load_token_stream, token_blocks_from_stream
from memexp.errors import ConfigValueError, DataNotFoundError, require


@dataclass
class HFSourceConfig:
    path: str = ""  # load_dataset's first argument
    data_files: Any = None  # a path, a list of paths, or {split: path(s)}
    config_name: str | None = None  # load_dataset's second argument (a dataset's configuration)
    train_split: str = "train"
    test_split: str | None = None  # the held-out split; None: carve it out of train_split (test_fraction)
    cache_dir: str | None = None  # datasets' cache (default: $HF_DATASETS_CACHE)


def check_source(cfg: HFSourceConfig) -> None:
    """Called by the builders (not by ``check()``: the option must compose on its own, path unset)."""
    require(
        bool(cfg.path),
        "data.path",
        cfg.path,
        "a dataset for datasets.load_dataset: a folder, a builder such as parquet/json/text with "
        "data.data_files=..., or a Hub name",
    )


def load_split(cfg: HFSourceConfig, split: str) -> Any:
    import datasets

    data_files = cfg.data_files
    if data_files is not None and not isinstance(data_files, str | list | dict):
        from omegaconf import OmegaConf

        data_files = OmegaConf.to_container(data_files)
    try:
        return datasets.load_dataset(
            cfg.path,
            cfg.config_name,
            data_files=data_files,
            split=split,
            cache_dir=str(Path(cfg.cache_dir).expanduser()) if cfg.cache_dir else None,
        )
    except (FileNotFoundError, ConnectionError, OSError) as error:
        raise DataNotFoundError(
            f"Hugging Face dataset {cfg.path!r} (data_files={data_files!r}, split={split!r}) could not be loaded: "
            f"{str(error).splitlines()[0].rstrip('.') if str(error) else type(error).__name__}. For local files use "
            "data.path=<parquet|json|text|csv|arrow> data.data_files=<file>; a Hub dataset needs one run with a "
            "network, after which datasets serves it from its cache"
        ) from None
    except ValueError as error:  # an unknown split, a bad config name
        raise ConfigValueError(
            "data.train_split" if split == cfg.train_split else "data.test_split", split, str(error).splitlines()[0]
        ) from None


def source_fingerprint(dataset: Any) -> str:
    return str(getattr(dataset, "_fingerprint", "")) or hashlib.sha256(repr(dataset).encode()).hexdigest()


def require_column(dataset: Any, column: str, key: str) -> None:
    require(column in dataset.column_names, key, column, f"one of the dataset's columns {dataset.column_names}")


# ----------------------------------------------------------------------------------------------
# Images


@dataclass
class HFImagesConfig(DataConfig, HFSourceConfig):
    name: str = "hf_images"
    image_column: str = "image"
    label_column: str = "label"
    test_fraction: float = 0.1  # used when test_split is None
    val_fraction: float = 0.1  # the validation split, carved out of the training data
    split_seed: int = 0
    augment: bool = False
    crop_padding: int = 4
    hflip: bool = True
    normalize: bool = True

    def check(self) -> None:
        require(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "a number in (0, 1)")
        check_val_fraction(self.val_fraction)
        require(self.crop_padding >= 0, "crop_padding", self.crop_padding, "an integer >= 0")


def images_of(dataset: Any, cfg: HFImagesConfig) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) images and int64 labels of one split."""
    require_column(dataset, cfg.image_column, "data.image_column")
    require_column(dataset, cfg.label_column, "data.label_column")
    arrays = [np.asarray(image) for image in dataset[cfg.image_column]]
    shapes = {array.shape for array in arrays}
    require(
        len(shapes) == 1,
        "data.image_column",
        cfg.image_column,
        f"images of one size (found {sorted(shapes)[:3]}...): resize them first",
    )
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ConfigValueError("data.image_column", cfg.image_column, f"8-bit images (found {images.dtype})")
    return images, np.asarray(dataset[cfg.label_column], dtype=np.int64)


@DATASETS.register("hf_images", config=HFImagesConfig)
def build_hf_images(cfg: HFImagesConfig, device: torch.device) -> InMemoryClassification:
    check_source(cfg)
    train = load_split(cfg, cfg.train_split)
    train_arrays = images_of(train, cfg)
    if cfg.test_split is None:
        train_arrays, test = carve(train_arrays, cfg.test_fraction, cfg.split_seed, "data.test_fraction")
    else:
        test = images_of(load_split(cfg, cfg.test_split), cfg)
    train_arrays, val = carve(train_arrays, cfg.val_fraction, cfg.split_seed, "data.val_fraction")
    label_feature = train.features[cfg.label_column]
    num_classes = getattr(label_feature, "num_classes", None) or int(
        max(train_arrays[1].max(), val[1].max(), test[1].max()) + 1
    )
    return image_bundle(Path(cfg.path).name or cfg.path, num_classes, train_arrays, val, test, cfg, device)


# ----------------------------------------------------------------------------------------------
# Text


@dataclass
class HFTextConfig(TextDataConfig, HFSourceConfig):
    name: str = "hf_text"
    text_column: str = "text"
    root: str = "${paths.data_root}"  # the token cache goes to <root>/hf_text/


def hf_token_stream(cfg: HFTextConfig, split: str) -> Any:
    dataset = load_split(cfg, split)
    require_column(dataset, cfg.text_column, "data.text_column")
    fingerprint = {
        "source": f"{cfg.path}:{cfg.config_name}:{split}:{cfg.text_column}",
        "fingerprint": source_fingerprint(dataset),
    }
    key = hashlib.sha256(f"{fingerprint}".encode()).hexdigest()[:16]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(cfg.path).name or cfg.path)
    stem = Path(cfg.root).expanduser() / "hf_text" / f"{safe_name}-{split}-{key}.{cfg.tokenizer}"
    return load_token_stream(
        [stem], fingerprint, cfg.tokenizer, lambda: [(text or "").encode("utf-8") for text in dataset[cfg.text_column]]
    )


@DATASETS.register("hf_text", config=HFTextConfig)
def build_hf_text(cfg: HFTextConfig, device: torch.device) -> TokenBlocks:
    check_source(cfg)
    name = Path(cfg.path).name or cfg.path
    train = hf_token_stream(cfg, cfg.train_split)
    if cfg.test_split is None:
        return token_blocks_from_stream(name, train, cfg, device)
    test = hf_token_stream(cfg, cfg.test_split)
    if cfg.tokenizer == "char" and train.metadata.get("chars") != test.metadata.get("chars"):
        # Each split fitted its own character vocabulary: ids would not mean the same characters.
        raise ConfigValueError(
            "data.tokenizer",
            "char",
            "byte or gpt2 when data.test_split is set (a character vocabulary is fitted per split)",
        )
    vocab = max(int(train.metadata["vocab_size"]), int(test.metadata["vocab_size"]))
    return token_blocks_from_stream(name, train, cfg, device, test_tokens=test.tokens, vocab_size=vocab)
