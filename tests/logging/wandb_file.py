"""Read what W&B wrote for an offline run (``run-<id>.wandb``), without W&B's servers.

The file is a LevelDB-style record log (W&B's "datastore" format): a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a complete record is one protobuf
``wandb.proto.wandb_internal_pb2.Record``. The tests use it to check the files W&B really
wrote.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK_SIZE = 32 * 1024
HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class WandbRunFile:
    run_id: str = ""
    group: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def _records(data: bytes) -> list[bytes]:
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"not a W&B run file (header {data[:7]!r})")
    records, partial, position = [], b"", HEADER.size
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # block trailer padding
            position += left_in_block
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        position += CHUNK_HEADER.size
        if kind == 0 and length == 0:  # zero padding at the end of the last block
            break
        chunk = data[position : position + length]
        position += length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            partial = chunk
        elif kind == MIDDLE:
            partial += chunk
        elif kind == LAST:
            records.append(partial + chunk)
            partial = b""
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_wandb_file(path: Path) -> WandbRunFile:
    from wandb.proto import wandb_internal_pb2

    result = WandbRunFile()
    for raw in _records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            result.run_id, result.group, result.name = record.run.run_id, record.run.run_group, record.run.display_name
            result.config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            result.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            result.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            result.summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            result.exit_code = record.exit.exit_code
    return result


def offline_run_files(run_dir: Path) -> list[Path]:
    """Every ``run-*.wandb`` file W&B wrote under ``run_dir/wandb``, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
