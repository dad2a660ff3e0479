"""Text for causal language modelling: token streams cached on disk, random fixed-length blocks.

A corpus is tokenized once (:mod:`memexp.data.tokenizers`) and written as a flat uint16 file plus a
small JSON file saying what it was built from; later runs memory-map it (``np.memmap``) and only
re-tokenize when the source or the tokenizer changed. The stream is cut into three contiguous parts:
training head, validation part (``val_fraction`` of what precedes the test tail) and held-out test
tail (``test_fraction``), so no training block overlaps a validation or test token.

Training batches are ``batch_size`` blocks at uniformly random offsets into the training part
(nanoGPT's ``get_batch``): ``x = tokens[i : i + T]``, ``y = tokens[i + 1 : i + T + 1]``. Streams up to
``device_tokens_limit`` tokens are copied to the training device once (2 bytes per token) and blocks
are gathered there; larger ones are gathered from the memory map on the host and sent through
pinned memory. The offsets come from a seeded CPU generator either way, so both paths give the same
batches, and the iterator's state (generator, step) makes a resumed run continue exactly.

Evaluation compares like with like: the same number of non-overlapping blocks, evenly spread over
the training part and over the test tail (``eval_blocks``, capped by ``trainer.eval_examples``), and
up to as many from the validation part.

Datasets here: ``stdlib_text`` (the offline default: the Python standard library's source files of
the running interpreter, in sorted order, byte-level) and ``text_file`` (any local UTF-8 file, e.g.
tiny-shakespeare's input.txt; ``data=shakespeare_char`` is that file with character tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from memexp.data.base import DATASETS, BatchIterator, DataBundle, DataConfig, DataSpec, check_val_fraction
from memexp.data.tokenizers import TOKENIZERS, make_tokenizer
from memexp.errors import ConfigValueError, DataNotFoundError, require
from memexp.rundir import write_atomic
from memexp.splits import SPLITS

CACHE_FORMAT = 1
TOKEN_DTYPE = np.uint16


@dataclass
class TextDataConfig(DataConfig):
    tokenizer: str = "byte"  # byte | char | gpt2 (needs tiktoken)
    block_size: int = 256  # tokens per training example
    test_fraction: float = 0.1  # the held-out test tail of the token stream
    val_fraction: float = 0.1  # the validation part: this fraction of what precedes the test tail
    eval_blocks: int = 128  # blocks per evaluation set (train subset, val, test); 0: every test block
    max_tokens: int = 0  # 0: the whole stream; N: only its first N tokens (before the split)
    device_tokens_limit: int = 500_000_000  # streams up to this many tokens live on the training device

    def check(self) -> None:
        require(self.tokenizer in TOKENIZERS, "tokenizer", self.tokenizer, f"one of {', '.join(TOKENIZERS)}")
        require(self.block_size > 0, "block_size", self.block_size, "an integer > 0")
        require(0.0 < self.test_fraction < 1.0, "test_fraction", self.test_fraction, "a number in (0, 1)")
        check_val_fraction(self.val_fraction)
        require(self.eval_blocks >= 0, "eval_blocks", self.eval_blocks, "an integer >= 0 (0: all test blocks)")
        require(self.max_tokens >= 0, "max_tokens", self.max_tokens, "an integer >= 0 (0: all)")
        require(self.device_tokens_limit >= 0, "device_tokens_limit", self.device_tokens_limit, "an integer >= 0")


# ----------------------------------------------------------------------------------------------
# The token cache


@dataclass
class TokenStream:
    tokens: np.ndarray  # uint16, memory-mapped read-only
    metadata: dict[str, Any]  # tokenizer name, vocab_size, (chars), source fingerprint, n_tokens
    path: Path
    reused: bool  # True when an existing cache file was memory-mapped instead of tokenizing again


def files_fingerprint(files: Sequence[Path], base: Path | None = None) -> str:
    """A hash of the files' names, sizes and modification times: it changes when any file does."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        name = file.relative_to(base).as_posix() if base else str(file.resolve())
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(stem: Path, fingerprint: dict[str, Any]) -> TokenStream | None:
    meta_path, tokens_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".u16")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if any(metadata.get(key) != value for key, value in fingerprint.items()):
        return None
    n_tokens = int(metadata.get("n_tokens", -1))
    if n_tokens <= 0 or not tokens_path.is_file() or tokens_path.stat().st_size != n_tokens * 2:
        return None
    tokens = np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r", shape=(n_tokens,))
    return TokenStream(tokens, metadata, tokens_path, reused=True)


def load_token_stream(
    cache_stems: Sequence[Path],
    fingerprint: dict[str, Any],
    tokenizer_name: str,
    read_documents: Callable[[], Sequence[bytes]],
) -> TokenStream:
    """Memory-map the cached tokens of a corpus, tokenizing it first when no valid cache exists.

    ``cache_stems``: where the cache may live, in order of preference (``<stem>.u16`` and
    ``<stem>.json``); the first existing valid cache is used, else the first writable place is
    written. ``fingerprint`` identifies the source; the tokenizer's name and the format are added.
    """
    fingerprint = {**fingerprint, "format": CACHE_FORMAT, "tokenizer": tokenizer_name}
    for stem in cache_stems:
        cached = _read_cache(stem, fingerprint)
        if cached is not None:
            return cached
    tokenizer = make_tokenizer(tokenizer_name)
    tokens = np.ascontiguousarray(tokenizer.encode_documents(read_documents()), dtype=TOKEN_DTYPE)
    if tokens.size == 0:
        raise DataNotFoundError(f"the text source {fingerprint.get('source')} is empty: no tokens to train on")
    metadata = {**tokenizer.metadata(), **fingerprint, "n_tokens": int(tokens.size)}
    errors = []
    for stem in cache_stems:
        try:
            stem.parent.mkdir(parents=True, exist_ok=True)
            tokens_path = stem.with_name(stem.name + ".u16")
            write_atomic(tokens_path, lambda handle: handle.write(tokens.tobytes()))
            # The JSON goes last: its presence (with the matching size) marks a complete cache.
            write_atomic(
                stem.with_name(stem.name + ".json"),
                lambda handle: handle.write(json.dumps(metadata, indent=1).encode()),
            )
        except OSError as error:
            errors.append(f"{stem.parent}: {error.strerror or error}")
            continue
        cached = _read_cache(stem, fingerprint)
        assert cached is not None, f"the token cache just written to {stem} does not read back"
        return TokenStream(cached.tokens, cached.metadata, cached.path, reused=False)
    raise DataNotFoundError(f"cannot write the token cache anywhere ({'; '.join(errors)}): set data.root")


# ----------------------------------------------------------------------------------------------
# Blocks


class TokenSource:
    """A token stream from which blocks are gathered, on the training device or from the host."""

    def __init__(self, tokens: np.ndarray, device: torch.device, on_device: bool) -> None:
        self.length, self.device, self.on_device = len(tokens), device, on_device
        self.host_tokens = tokens
        if on_device:
            # int16 is the 2-byte type every backend indexes; the bit pattern is the uint16 token.
            self.device_tokens = torch.from_numpy(np.array(tokens, dtype=TOKEN_DTYPE).view(np.int16)).to(device)

    def blocks(self, starts: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
        """Inputs ``tokens[s : s + T]`` and targets ``tokens[s + 1 : s + T + 1]`` for each start ``s``."""
        if self.on_device:
            index = starts.to(self.device)[:, None] + torch.arange(block_size + 1, device=self.device)
            window = self.device_tokens[index].long() & 0xFFFF
        else:
            index = starts.numpy()[:, None] + np.arange(block_size + 1)
            window = torch.from_numpy(self.host_tokens[index].astype(np.int64))
            if self.device.type == "cuda":
                window = window.pin_memory().to(self.device, non_blocking=True)
            else:
                window = window.to(self.device)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()


class TokenBlockIterator(BatchIterator):
    def __init__(self, source: TokenSource, batch_size: int, block_size: int, seed: int) -> None:
        require(batch_size > 0, "trainer.batch_size", batch_size, "an integer > 0")
        self.source, self.batch_size, self.block_size = source, batch_size, block_size
        self.high = source.length - block_size  # starts in [0, length - T - 1]: the last target exists
        self.steps_per_epoch = max(1, (source.length - 1) // (batch_size * block_size))
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0

    def __next__(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, self.high, (self.batch_size,), generator=self.generator)
        self.step += 1
        return self.source.blocks(starts, self.block_size)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


def evenly_spread_blocks(length: int, block_size: int, count: int) -> Tensor:
    """Starts of ``count`` non-overlapping blocks (each with its next-token target) spread evenly."""
    available = (length - 1) // block_size
    slots = torch.linspace(0, available - 1, count).round().long() if count > 1 else torch.zeros(1, dtype=torch.long)
    return slots * block_size


class TokenBlocks(DataBundle):
    """A language-modelling dataset: training, validation and test token streams cut into blocks."""

    def __init__(
        self,
        name: str,
        streams: dict[str, np.ndarray],
        vocab_size: int,
        block_size: int,
        device: torch.device,
        eval_blocks: int = 128,
        device_tokens_limit: int = 500_000_000,
    ) -> None:
        for split, tokens in streams.items():
            require(
                len(tokens) > block_size,
                "data.block_size",
                block_size,
                f"an integer < {len(tokens)} (the {split} part's length in tokens)",
            )
        self.spec = DataSpec(name=name, task="lm", input_shape=(block_size,), num_classes=vocab_size)
        on_device = sum(len(tokens) for tokens in streams.values()) <= device_tokens_limit
        self.train, self.val, self.test = (TokenSource(streams[split], device, on_device) for split in SPLITS)
        self.block_size, self.eval_blocks = block_size, eval_blocks

    def train_iterator(self, batch_size: int, seed: int) -> BatchIterator:
        return TokenBlockIterator(self.train, batch_size, self.block_size, seed)

    def eval_sets(self, max_examples: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
        sources = {split: getattr(self, split) for split in SPLITS}

        def blocks_in(split: str) -> int:
            return (sources[split].length - 1) // self.block_size

        count = min(blocks_in("train"), blocks_in("test"))  # train and test the same size
        if self.eval_blocks:
            count = min(count, self.eval_blocks)
        if max_examples > 0:
            count = min(count, max_examples)
        counts = {"train": count, "val": min(count, blocks_in("val")), "test": count}
        return {
            split: source.blocks(evenly_spread_blocks(source.length, self.block_size, counts[split]), self.block_size)
            for split, source in sources.items()
        }


def token_blocks_from_stream(
    name: str,
    stream: TokenStream,
    cfg: TextDataConfig,
    device: torch.device,
    test_tokens: np.ndarray | None = None,
    vocab_size: int | None = None,
) -> TokenBlocks:
    """Cut one stream into its training head, validation part and test tail (or, with ``test_tokens``
    from a separate split, into training head and validation tail)."""
    tokens = stream.tokens[: cfg.max_tokens] if cfg.max_tokens else stream.tokens
    if test_tokens is None:
        n_test = int(round(len(tokens) * cfg.test_fraction))
        tokens, test_tokens = tokens[: len(tokens) - n_test], tokens[len(tokens) - n_test :]
    n_val = int(round(len(tokens) * cfg.val_fraction))
    return TokenBlocks(
        name,
        {"train": tokens[: len(tokens) - n_val], "val": tokens[len(tokens) - n_val :], "test": test_tokens},
        vocab_size or int(stream.metadata["vocab_size"]),
        cfg.block_size,
        device,
        cfg.eval_blocks,
        cfg.device_tokens_limit,
    )


# ----------------------------------------------------------------------------------------------
# stdlib_text: the offline default


@dataclass
class StdlibTextConfig(TextDataConfig):
    name: str = "stdlib_text"
    root: str = "${paths.data_root}"  # the token cache goes to <root>/stdlib_text/
    include_tests: bool = True  # the test suites (test/, */tests/, idle_test/) are ~60% of the text


EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_source_files(include_tests: bool = True) -> tuple[Path, list[Path]]:
    """The running interpreter's standard library ``.py`` files in sorted (relative path) order."""
    base = Path(sysconfig.get_paths()["stdlib"])
    excluded = EXCLUDED_DIRS | (set() if include_tests else TEST_DIRS)
    relative: list[str] = []
    for folder, subfolders, names in os.walk(base):
        subfolders[:] = [name for name in subfolders if name not in excluded]  # prune: never walk site-packages
        prefix = os.path.relpath(folder, base).replace(os.sep, "/")
        relative += [name if prefix == "." else f"{prefix}/{name}" for name in names if name.endswith(".py")]
    return base, [base / name for name in sorted(relative)]


@DATASETS.register("stdlib_text", config=StdlibTextConfig)
def build_stdlib_text(cfg: StdlibTextConfig, device: torch.device) -> TokenBlocks:
    base, files = stdlib_source_files(cfg.include_tests)
    if not files:
        raise DataNotFoundError(
            f"no .py files under {base} (this Python ships its standard library without "
            "source): use data=text_file data.path=<a text file>"
        )
    version = ".".join(map(str, sys.version_info[:3]))
    source = f"python-{version}-stdlib" + ("" if cfg.include_tests else "-notests")
    fingerprint = {"source": str(base), "files": len(files), "fingerprint": files_fingerprint(files, base)}
    stem = Path(cfg.root).expanduser() / "stdlib_text" / f"{source}.{cfg.tokenizer}"
    stream = load_token_stream([stem], fingerprint, cfg.tokenizer, lambda: [path.read_bytes() for path in files])
    return token_blocks_from_stream("stdlib_text", stream, cfg, device)


# ----------------------------------------------------------------------------------------------
# text_file: any local text file


@dataclass
class TextFileConfig(TextDataConfig):
    name: str = "text_file"
    path: str = ""
    tokenizer: str = "char"
    root: str = "${paths.data_root}"  # the token cache goes next to the file, or here when that is read-only
    download_url: str | None = None  # where the file can be fetched from (named in the missing-file message)
    download: bool = False  # fetch download_url when the file is missing (needs a network)

    def check(self) -> None:
        # An empty path passes here (the option must compose on its own) and is reported by the builder.
        super().check()
        require(
            not self.download or bool(self.download_url),
            "download",
            self.download,
            "false unless data.download_url is set",
        )


def download_file(url: str, path: Path) -> None:
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except OSError as error:
        raise DataNotFoundError(f"could not download {url} to {path}: {error}") from None
    write_atomic(path, lambda handle: handle.write(payload))


@DATASETS.register("text_file", config=TextFileConfig)
def build_text_file(cfg: TextFileConfig, device: torch.device) -> TokenBlocks:
    require(bool(cfg.path), "data.path", cfg.path, "the path of a local UTF-8 text file, e.g. data.path=input.txt")
    path = Path(cfg.path).expanduser()
    if not path.is_file() and cfg.download and cfg.download_url:
        download_file(cfg.download_url, path)
    if not path.is_file():
        how = (
            f"curl -L {cfg.download_url} -o {path} --create-dirs (or add data.download=true)"
            if cfg.download_url
            else "give the path of an existing UTF-8 text file as data.path=..."
        )
        raise DataNotFoundError(f"text file not found: {path}. To get it: {how}")
    if path.is_dir():
        raise ConfigValueError("data.path", cfg.path, "a file, not a directory")
    fingerprint = {"source": str(path.resolve()), "fingerprint": files_fingerprint([path])}
    path_key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    stems = [
        path.with_name(f"{path.name}.{cfg.tokenizer}"),
        Path(cfg.root).expanduser() / "text_file" / f"{path_key}-{path.name}.{cfg.tokenizer}",
    ]
    stream = load_token_stream(stems, fingerprint, cfg.tokenizer, lambda: [path.read_bytes()])
    return token_blocks_from_stream(path.stem, stream, cfg, device)
