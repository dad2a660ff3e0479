"""Hugging Face datasets from local files: text (text and parquet builders) and images (parquet)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memexp.data import DATASETS
from memexp.data.huggingface import HFImagesConfig, HFTextConfig
from memexp.errors import ConfigValueError, DataNotFoundError

CPU = torch.device("cpu")
datasets = pytest.importorskip("datasets")


def test_local_text_file_through_the_text_builder(tmp_path):
    lines = [f"line {i}: the quick brown fox" for i in range(200)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    cfg = HFTextConfig(
        path="text",
        data_files=str(corpus),
        cache_dir=str(tmp_path / "hf"),
        root=str(tmp_path),
        tokenizer="byte",
        block_size=32,
        eval_blocks=4,
    )
    bundle = DATASETS.build("hf_text", cfg, CPU)
    # The text builder yields one row per line; joining rows with newlines gives the file back.
    stream = np.concatenate([bundle.train.host_tokens, bundle.val.host_tokens, bundle.test.host_tokens])
    assert bytes(stream.astype(np.uint8)).decode() == "\n".join(lines)
    assert bundle.spec.task == "lm" and bundle.spec.num_classes == 256
    again = DATASETS.build("hf_text", cfg, CPU)
    assert len(list((tmp_path / "hf_text").glob("*.u16"))) == 1 and again.train.length == bundle.train.length


def test_parquet_text_column_with_an_explicit_test_split(tmp_path):
    train = datasets.Dataset.from_dict({"content": ["alpha beta"] * 30, "id": list(range(30))})
    test = datasets.Dataset.from_dict({"content": ["gamma delta"] * 10, "id": list(range(10))})
    train.to_parquet(str(tmp_path / "train.parquet"))
    test.to_parquet(str(tmp_path / "test.parquet"))
    cfg = HFTextConfig(
        path="parquet",
        data_files={"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")},
        test_split="test",
        text_column="content",
        cache_dir=str(tmp_path / "hf"),
        root=str(tmp_path),
        block_size=8,
        eval_blocks=0,
    )
    bundle = DATASETS.build("hf_text", cfg, CPU)
    # The test split is the named split; validation is the tail (val_fraction 0.1) of the training stream.
    train_length = len("\n".join(["alpha beta"] * 30))
    assert bundle.train.length + bundle.val.length == train_length and bundle.val.length == round(0.1 * train_length)
    assert bundle.test.length == len("\n".join(["gamma delta"] * 10))
    x_test, _ = bundle.eval_sets()["test"]
    assert bytes(x_test[0].numpy().astype(np.uint8)) == b"gamma de"
    with pytest.raises(ConfigValueError, match="data.text_column"):
        DATASETS.build(
            "hf_text",
            HFTextConfig(
                path="parquet",
                data_files=str(tmp_path / "train.parquet"),
                cache_dir=str(tmp_path / "hf"),
                root=str(tmp_path),
            ),
            CPU,
        )


def test_parquet_images_with_class_labels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 20)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": labels.tolist()}, features=features
    )
    table.to_parquet(str(tmp_path / "images.parquet"))
    cfg = HFImagesConfig(
        path="parquet",
        data_files=str(tmp_path / "images.parquet"),
        cache_dir=str(tmp_path / "hf"),
        test_fraction=0.25,
        val_fraction=0.2,
        normalize=False,
        augment=True,
        crop_padding=1,
    )
    bundle = DATASETS.build("hf_images", cfg, CPU)
    assert bundle.spec.input_shape == (3, 6, 6) and bundle.spec.num_classes == 3
    # 20 images: test round(0.25 * 20) = 5, validation round(0.2 * 15) = 3, train 12.
    assert [getattr(bundle, split)[0].shape[0] for split in ("train", "val", "test")] == [12, 3, 5]
    everything = torch.cat([bundle.train[0], bundle.val[0], bundle.test[0]])
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    # A partition of the 20 images (the split is a seeded permutation), pixels exact.
    assert sorted(x.numpy().tobytes() for x in everything) == sorted(x.numpy().tobytes() for x in expected)
    assert bundle.augment is not None


def test_missing_local_files_are_a_one_line_data_error(tmp_path):
    cfg = HFTextConfig(path="parquet", data_files=str(tmp_path / "absent.parquet"), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(DataNotFoundError, match="could not be loaded") as error:
        DATASETS.build("hf_text", cfg, CPU)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigValueError, match="data.path=''"):
        DATASETS.build("hf_images", HFImagesConfig(), CPU)
