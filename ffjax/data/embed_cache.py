"""On-disk cache of prompt embeddings, keyed by content hashes, shared safely between hosts.

An entry is one prompt's arrays (e.g. T5 states and the CLIP pooled vector), stored
under `sha256(canonical JSON of the key parts)`: the encoder weights' fingerprint, the
tokenizer files' hash, the prompt, max length, template, dtype. Changing any of them
changes the key, so a stale entry is never read.

Files are written to a unique temporary name in the same directory and `os.replace`d
into place: readers on any host see a whole file or none; two hosts writing the same
key write identical bytes and the last rename wins. Each file carries the SHA-256 of
its payload, so a truncated or corrupted file is detected, logged, deleted and rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

_MAGIC = b"FFJAXEMB1"
_SAMPLE_CHUNKS, _CHUNK = 64, 1 << 16  # bytes of each safetensors file hashed by default


# --------------------------------------------------------------------------- fingerprints


def _hash_file(h: Any, path: str, *, full: bool) -> None:
    size = os.path.getsize(path)
    h.update(f"{os.path.basename(path)}:{size}\n".encode())
    with open(path, "rb") as f:
        if full or not path.endswith(".safetensors") or size <= _SAMPLE_CHUNKS * _CHUNK:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return
        # Header (names, shapes, dtypes, offsets) plus evenly spaced chunks of the data:
        # a different checkpoint of the same shapes differs in (almost) every chunk.
        n = int.from_bytes(f.read(8), "little")
        h.update(f.read(n))
        for i in range(_SAMPLE_CHUNKS):
            f.seek(8 + n + (size - 8 - n - _CHUNK) * i // (_SAMPLE_CHUNKS - 1))
            h.update(f.read(_CHUNK))


@functools.lru_cache(maxsize=64)
def _folder_hash(folder: str, suffixes: tuple[str, ...], full: bool, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and (not suffixes or name.endswith(suffixes)):
            _hash_file(h, path, full=full)
    return h.hexdigest()


def _stamp(folder: str) -> tuple:
    # Re-hash when a file in the folder changes (name, size, mtime).
    return tuple(
        sorted(
            (e.name, e.stat().st_size, e.stat().st_mtime_ns)
            for e in os.scandir(folder)
            if e.is_file()
        )
    )


def weights_fingerprint(folder: str | os.PathLike, *, full: bool = False) -> str:
    """SHA-256 over a checkpoint folder's config.json, index and safetensors files.

    Default: whole JSON files; for each safetensors file its size, header and 64
    evenly spaced 64 KiB chunks of tensor data (seconds even for T5-XXL). full=True
    hashes every byte.
    """
    folder = os.fspath(folder)
    return _folder_hash(folder, (".json", ".safetensors"), full, _stamp(folder))


def tokenizer_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over every file of a tokenizer folder (they are small)."""
    folder = os.fspath(folder)
    return _folder_hash(folder, (), True, _stamp(folder))


def cache_key(**parts: Any) -> str:
    """sha256 hex of the canonical JSON of `parts` (strings, numbers, lists, dicts, None)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- the cache


def _dtype(name: str) -> np.dtype:
    import ml_dtypes

    return np.dtype(getattr(ml_dtypes, name)) if name == "bfloat16" else np.dtype(name)


class EmbedCache:
    """A directory of `<key[:2]>/<key>.emb` files, each a checksummed `.npz` of named arrays.

    Attributes:
      directory: where entries live; created if absent; may be shared by several hosts.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], f"{key}.emb")

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under `key`, or None if absent or corrupted (then deleted)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        try:
            head, payload = blob.split(b"\n", 1)
            magic, digest = head.split(b" ")
            if magic != _MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
                raise ValueError("checksum mismatch")
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                dtypes = json.loads(str(z["__dtypes__"]))
                return {k: z[k].view(_dtype(dtypes[k])) for k in z.files if k != "__dtypes__"}
        except (ValueError, KeyError, OSError, EOFError) as e:
            logging.warning("embedding cache: corrupted entry %s (%s); rebuilding it", path, e)
            try:
                os.remove(path)
            except FileNotFoundError:  # another host got there first
                pass
            return None

    def save(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes `arrays` under `key` atomically (unique temp file + fsync + os.replace)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        # npz has no bfloat16: store raw bytes and each array's dtype name alongside.
        raw = {
            k: v.view(f"u{v.dtype.itemsize}")
            if v.dtype.kind == "V" or v.dtype.name == "bfloat16"
            else v
            for k, v in arrays.items()
        }
        dtypes = json.dumps({k: v.dtype.name for k, v in arrays.items()})
        buf = io.BytesIO()
        np.savez(buf, __dtypes__=np.array(dtypes), **raw)
        payload = buf.getvalue()
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(
                    _MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def cached_encode(
    cache: EmbedCache | None,
    items: Sequence[Any],
    encode_fn: Callable[[list[Any]], Mapping[str, Any]],
    key_parts: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """Per-item cached batch encoding.

    Args:
      cache: the cache, or None to always encode.
      items: B JSON-able items (a prompt, or a (prompt, prompt_2) pair); part of each key.
      encode_fn: encodes a list of the missing items in one batch -> {name: [n, ...]}
        (each row must depend on its own item only, true for pipelines that pad to a
        fixed length).
      key_parts: everything else the embeddings depend on (fingerprints, max length,
        template, dtype).

    Returns:
      {name: np.ndarray [B, ...]} in item order; on a full hit encode_fn is not called.
    """
    if not items:
        raise ValueError("cached_encode needs at least one item")
    if cache is None:
        return {k: np.asarray(v) for k, v in encode_fn(list(items)).items()}
    keys = [cache_key(item=item, **key_parts) for item in items]
    rows: list[dict[str, np.ndarray] | None] = [cache.load(k) for k in keys]
    todo: dict[str, int] = {}  # key -> first missing item with it (encode repeats once)
    for i, r in enumerate(rows):
        if r is None:
            todo.setdefault(keys[i], i)
    if todo:
        out = {k: np.asarray(v) for k, v in encode_fn([items[i] for i in todo.values()]).items()}
        fresh = {}
        for j, key in enumerate(todo):
            fresh[key] = {k: v[j] for k, v in out.items()}
            cache.save(key, fresh[key])
        rows = [fresh[key] if r is None else r for r, key in zip(rows, keys, strict=True)]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
