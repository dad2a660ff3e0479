"""Tokenizers for language modelling: byte-level, character-level, and the GPT-2 BPE (tiktoken).

A corpus is a sequence of documents (raw bytes). Byte and character tokens join the documents with a
newline; the GPT-2 BPE puts its end-of-text token after each document (as GPT-2's training data did).
Token ids are < 65,536 for all three, so a token stream is stored as uint16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memexp.errors import ConfigValueError, DataNotFoundError

TOKENIZERS = ("byte", "char", "gpt2")
DOCUMENT_SEPARATOR = b"\n"


class Tokenizer:
    name: str
    vocab_size: int

    def encode_documents(self, documents: Sequence[bytes]) -> np.ndarray:
        """The whole corpus as one uint16 token stream."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """What must be stored with a token cache to decode it again."""
        return {"tokenizer": self.name, "vocab_size": self.vocab_size}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocabulary 256, no training, any text (or binary) round-trips exactly."""

    name, vocab_size = "byte", 256

    def encode_documents(self, documents: Sequence[bytes]) -> np.ndarray:
        return np.frombuffer(DOCUMENT_SEPARATOR.join(documents), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8)).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """Unicode characters as tokens, the vocabulary being the sorted set of characters of the corpus
    (nanoGPT's shakespeare_char: 65 tokens). Bytes that are not UTF-8 become U+FFFD."""

    name = "char"

    def __init__(self, chars: str = "") -> None:
        self._set_vocabulary(chars)

    def _set_vocabulary(self, chars: str) -> None:
        self.chars = chars
        self.vocab_size = len(chars)
        self._codepoints = np.frombuffer(chars.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)

    @staticmethod
    def _codepoints_of(text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)

    def encode_documents(self, documents: Sequence[bytes]) -> np.ndarray:
        text = DOCUMENT_SEPARATOR.join(documents).decode("utf-8", errors="replace")
        codepoints = self._codepoints_of(text)
        if not self.chars:  # fit the vocabulary to this corpus
            vocabulary = np.unique(codepoints)
            if len(vocabulary) > 65536:
                raise ConfigValueError(
                    "data.tokenizer",
                    "char",
                    f"at most 65,536 distinct characters (the corpus has {len(vocabulary)}): use tokenizer=byte",
                )
            self._set_vocabulary(vocabulary.astype("<u4").tobytes().decode("utf-32-le", errors="surrogatepass"))
        ids = np.searchsorted(self._codepoints, codepoints)
        ids = np.minimum(ids, len(self._codepoints) - 1)
        unknown = self._codepoints[ids] != codepoints
        if unknown.any():
            missing = sorted({chr(c) for c in codepoints[unknown][:20]})
            raise ConfigValueError("data.tokenizer", "char", f"a vocabulary covering the text (missing {missing})")
        return ids.astype(np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64))

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "chars": self.chars}


class TiktokenTokenizer(Tokenizer):
    """OpenAI's GPT-2 byte-pair encoding (50,257 tokens) through the ``tiktoken`` package."""

    name = "gpt2"

    def __init__(self, encoding_name: str = "gpt2") -> None:
        try:
            import tiktoken
        except ImportError:
            raise DataNotFoundError(
                "data.tokenizer=gpt2 needs the tiktoken package: pip install 'memexp[bpe]' (or pip install tiktoken); "
                "or use tokenizer=byte / tokenizer=char"
            ) from None
        try:
            self.encoding = tiktoken.get_encoding(encoding_name)
        except Exception as error:  # noqa: BLE001 - a network error when the vocabulary is not cached yet
            raise DataNotFoundError(
                f"the GPT-2 BPE vocabulary is not cached and could not be downloaded ({type(error).__name__}). "
                "On a machine with network run: python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\" with "
                "TIKTOKEN_CACHE_DIR set to a folder you then copy here and point TIKTOKEN_CACHE_DIR at; "
                "or use tokenizer=byte / tokenizer=char"
            ) from None
        self.vocab_size = self.encoding.n_vocab
        if self.vocab_size > 65536:
            raise ConfigValueError("data.tokenizer", encoding_name, "an encoding with at most 65,536 tokens (uint16)")

    def encode_documents(self, documents: Sequence[bytes]) -> np.ndarray:
        texts = [document.decode("utf-8", errors="replace") for document in documents]
        end_of_text = self.encoding.eot_token
        pieces = [
            np.asarray(ids + [end_of_text], dtype=np.uint16) for ids in self.encoding.encode_ordinary_batch(texts)
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.encoding.decode([int(i) for i in ids])


def make_tokenizer(name: str, metadata: dict[str, Any] | None = None) -> Tokenizer:
    """A tokenizer by name; ``metadata`` (from a token cache) restores a fitted character vocabulary."""
    if name == "byte":
        return ByteTokenizer()
    if name == "char":
        return CharTokenizer((metadata or {}).get("chars", ""))
    if name == "gpt2":
        return TiktokenTokenizer("gpt2")
    raise ConfigValueError("data.tokenizer", name, f"one of {', '.join(TOKENIZERS)}")
