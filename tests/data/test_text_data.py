"""Tokenizers, the memory-mapped token cache, random blocks, the held-out tail, stdlib_text, text_file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from memexp.data import DATASETS, text
from memexp.data.text import StdlibTextConfig, TextFileConfig, TokenBlocks, stdlib_source_files
from memexp.data.tokenizers import ByteTokenizer, CharTokenizer, TiktokenTokenizer, make_tokenizer
from memexp.errors import ConfigValueError, DataNotFoundError

CPU = torch.device("cpu")
SAMPLE = "Größe: 3€ — naïve café 🐍\nsecond line\n"


def test_byte_tokenizer_round_trips_any_utf8():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode_documents([SAMPLE.encode(), b"doc two"])
    assert ids.dtype == np.uint16 and ids.max() < 256
    assert list(ids[:3]) == [ord("G"), ord("r"), 0xC3]  # 'ö' is two UTF-8 bytes
    assert tokenizer.decode(ids) == SAMPLE + "\n" + "doc two"


def test_char_tokenizer_fits_the_sorted_character_set_and_round_trips():
    tokenizer = CharTokenizer()
    ids = tokenizer.encode_documents([SAMPLE.encode()])
    assert tokenizer.chars == "".join(sorted(set(SAMPLE)))
    assert tokenizer.vocab_size == len(set(SAMPLE)) and len(ids) == len(SAMPLE)
    assert tokenizer.decode(ids) == SAMPLE
    restored = make_tokenizer("char", tokenizer.metadata())  # from a cache's metadata
    np.testing.assert_array_equal(restored.encode_documents([SAMPLE.encode()]), ids)
    with pytest.raises(ConfigValueError, match="missing"):
        restored.encode_documents(["unseen ✓".encode()])


def test_gpt2_tokenizer_puts_end_of_text_after_each_document(monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    # The GPT-2 vocabulary is a download; a byte-level Encoding with the same end-of-text token id
    # convention exercises memexp's code path offline.
    encoding = tiktoken.Encoding(
        "bytes",
        pat_str=r"\S+|\s+",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)
    tokenizer = TiktokenTokenizer("gpt2")
    ids = tokenizer.encode_documents([b"ab", "é".encode()])
    assert ids.tolist() == [97, 98, 256, 0xC3, 0xA9, 256] and tokenizer.vocab_size == 257
    assert tokenizer.decode(ids) == "ab<|endoftext|>é<|endoftext|>"


def write_corpus(path, n_chars: int = 5000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    corpus = "".join(rng.choice(list("abcdefgh \n"), n_chars))
    path.write_text(corpus)
    return corpus


def test_token_cache_is_written_next_to_the_file_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "input.txt"
    corpus = write_corpus(path)
    cfg = TextFileConfig(path=str(path), root=str(tmp_path / "root"), block_size=16)
    bundle = DATASETS.build("text_file", cfg, CPU)
    cache = tmp_path / "input.txt.char.u16"
    assert cache.is_file() and (tmp_path / "input.txt.char.json").is_file()
    assert bundle.spec.num_classes == len(set(corpus)) and bundle.spec.input_shape == (16,)
    stamp = cache.stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(text, "make_tokenizer", no_tokenizing)
    again = text.load_token_stream(
        [tmp_path / "input.txt.char"],
        {"source": str(path.resolve()), "fingerprint": text.files_fingerprint([path])},
        "char",
        lambda: [],
    )
    assert again.reused and isinstance(again.tokens, np.memmap) and cache.stat().st_mtime_ns == stamp
    decoded = CharTokenizer(again.metadata["chars"]).decode(again.tokens)
    assert decoded == corpus
    monkeypatch.undo()
    # A changed source (size and mtime) is tokenized again.
    write_corpus(path, n_chars=6000, seed=1)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    rebuilt = DATASETS.build("text_file", cfg, CPU)
    assert rebuilt.train.length + rebuilt.val.length + rebuilt.test.length == 6000


def test_blocks_are_random_windows_of_the_training_head_and_eval_uses_the_disjoint_tail():
    tokens = np.arange(260, dtype=np.uint16)  # each token is its own position
    streams = {"train": tokens[:100], "val": tokens[100:160], "test": tokens[160:]}
    bundle = TokenBlocks("counting", streams, vocab_size=260, block_size=10, device=CPU, eval_blocks=8)
    batches = bundle.train_iterator(batch_size=64, seed=0)
    starts = []
    for _ in range(20):
        x, y = next(batches)
        assert x.shape == y.shape == (64, 10) and x.dtype == torch.long
        torch.testing.assert_close(x, x[:, :1] + torch.arange(10), rtol=0, atol=0)  # contiguous windows
        torch.testing.assert_close(y, x + 1, rtol=0, atol=0)  # targets are the next tokens
        starts += x[:, 0].tolist()
    # 1,280 draws from the 90 possible starts: every one appears (the seed is fixed); y's last token
    # can be 99, the last training token, never beyond.
    assert sorted(set(starts)) == list(range(90))
    evaluation = bundle.eval_sets()
    (x_train, y_train), (x_test, y_test) = evaluation["train"], evaluation["test"]
    x_val, y_val = evaluation["val"]
    assert x_train.shape == x_test.shape == (8, 10)
    assert x_val.shape == (5, 10)  # (60 - 1) // 10 = 5 whole blocks in the validation part
    assert y_train.max() < 100 and x_val.min() >= 100 and y_val.max() < 160 and x_test.min() >= 160
    torch.testing.assert_close(y_test, x_test + 1, rtol=0, atol=0)
    test_starts = x_test[:, 0].tolist()
    assert all(b - a >= 10 for a, b in zip(test_starts, test_starts[1:]))  # non-overlapping
    assert bundle.eval_sets(max_examples=3)["test"][0].shape == (3, 10)
    assert batches.steps_per_epoch == 1  # 99 // 640 rounded up to one step
    assert bundle.train_iterator(batch_size=2, seed=0).steps_per_epoch == 99 // 20


def test_device_and_host_gathering_give_identical_batches_and_resume_exactly():
    tokens = np.random.default_rng(0).integers(0, 65535, 5000).astype(np.uint16)
    streams = {"train": tokens[:4000], "val": tokens[4000:4500], "test": tokens[4500:]}
    on_device = TokenBlocks("t", streams, 65536, 32, CPU, device_tokens_limit=10**9)
    on_host = TokenBlocks("t", streams, 65536, 32, CPU, device_tokens_limit=0)
    assert on_device.train.on_device and not on_host.train.on_device
    a, b = on_device.train_iterator(8, seed=3), on_host.train_iterator(8, seed=3)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    assert xa.max() > 32767  # uint16 ids above int16's range survive the device path
    state = a.state_dict()
    expected = [next(a) for _ in range(4)]
    resumed = on_device.train_iterator(8, seed=99)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (next(resumed) for _ in range(4))):
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)


def test_stdlib_text_is_the_sorted_standard_library_as_bytes(tmp_path):
    base, files = stdlib_source_files()
    names = [f.relative_to(base).as_posix() for f in files]
    assert names == sorted(names) and "os.py" in names and "json/__init__.py" in names
    assert not any("site-packages" in name for name in names)
    assert len(stdlib_source_files(include_tests=False)[1]) < len(files)
    cfg = StdlibTextConfig(root=str(tmp_path), block_size=64, max_tokens=200_000, eval_blocks=4)
    bundle = DATASETS.build("stdlib_text", cfg, CPU)
    assert bundle.spec.task == "lm" and bundle.spec.num_classes == 256 and bundle.spec.input_shape == (64,)
    # 200,000 tokens: the test tail 20,000, validation 0.1 of the remaining 180,000, train 162,000.
    assert (bundle.train.length, bundle.val.length, bundle.test.length) == (162_000, 18_000, 20_000)
    first = files[0].read_bytes()
    assert bytes(bundle.train.host_tokens[: min(len(first), 1000)].astype(np.uint8)) == first[:1000]
    assert len(list((tmp_path / "stdlib_text").glob("*.u16"))) == 1


def test_text_errors_name_the_key_or_the_path(tmp_path):
    TextFileConfig().check()  # the option composes and checks on its own; the builder asks for the path
    with pytest.raises(ConfigValueError, match="data.path=''"):
        DATASETS.build("text_file", TextFileConfig(), CPU)
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "nope.txt")):
        DATASETS.build("text_file", TextFileConfig(path=str(tmp_path / "nope.txt"), root=str(tmp_path)), CPU)
    missing = TextFileConfig(path=str(tmp_path / "s" / "input.txt"), download_url="https://example.org/input.txt")
    with pytest.raises(DataNotFoundError, match="curl -L https://example.org/input.txt"):
        DATASETS.build("text_file", missing, CPU)
    assert not (tmp_path / "s").exists()
    short = tmp_path / "short.txt"
    short.write_text("abc" * 10)
    with pytest.raises(ConfigValueError, match="data.block_size"):
        DATASETS.build("text_file", TextFileConfig(path=str(short), block_size=64), CPU)


def test_data_roots_follow_memexp_data_and_default_to_the_user_cache(compose, monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    monkeypatch.setenv("MEMEXP_DATA", str(tmp_path))
    cfg = compose(["model=gpt", "data=shakespeare_char"])
    assert OmegaConf.to_object(cfg.data).path == f"{tmp_path}/shakespeare/input.txt"
    assert compose(["data=cifar10"]).data.root == str(tmp_path)
    monkeypatch.delenv("MEMEXP_DATA")
    assert compose(["data=stdlib_text"]).data.root == "~/.cache/memexp"


def test_shakespeare_char_reads_the_file_in_the_data_root(tmp_path):
    path = tmp_path / "shakespeare" / "input.txt"
    path.parent.mkdir()
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    cfg = TextFileConfig(path=str(path), block_size=16, download_url="https://example.org/input.txt")
    bundle = DATASETS.build("text_file", cfg, CPU)
    assert bundle.spec.num_classes == len(set(path.read_text()))
    x, y = next(bundle.train_iterator(4, seed=0))
    torch.testing.assert_close(x[:, 1:], y[:, :-1], rtol=0, atol=0)
