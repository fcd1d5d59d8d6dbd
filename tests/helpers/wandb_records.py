"""Read what an offline W&B run recorded, from its ``run-<id>.wandb`` file.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by
LevelDB-log framed records (32 KiB blocks; each chunk: crc32c, length, type) holding ``Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield _parse(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield _parse(pending + chunk)
            pending = b""
        else:  # zero padding
            break


def _parse(raw: bytes) -> wandb_internal_pb2.Record:
    rec = wandb_internal_pb2.Record()
    rec.ParseFromString(raw)
    return rec


def history(path: Path) -> list[dict]:
    """Every logged row, as ``{key: value}``."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
    return rows


def config(path: Path) -> dict:
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                out[item.key] = json.loads(item.value_json)
    return out


def run_info(path: Path) -> dict:
    """The run's group, display name and job type."""
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            return {"group": rec.run.run_group, "name": rec.run.display_name, "job_type": rec.run.job_type}
    raise AssertionError(f"{path} has no run record")


def summary(path: Path) -> dict:
    """The run summary as the run left it: every update applied in order."""
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def media_steps(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Per media key (images and tables), ``(trainer/global_step, count)`` of every row that logged it, in order
    (``count``: images in that row; 1 for a table)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for row in history(path):
        for name, value in row.items():
            if name.endswith("/_type") and value in ("images/separated", "table-file"):
                key = name[: -len("/_type")]
                out.setdefault(key, []).append((row["trainer/global_step"], row.get(f"{key}/count", 1)))
    return out


def artifact_files(path: Path, name_contains: str) -> list[str]:
    """The files of the artifacts whose name contains ``name_contains`` (a W&B table's image cells live in one)."""
    return [entry.path for rec in records(path) if rec.WhichOneof("record_type") == "artifact"
            and name_contains in rec.artifact.name for entry in rec.artifact.manifest.contents]
