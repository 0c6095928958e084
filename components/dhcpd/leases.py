"""Lease persistence: one msgpack file per store, replaced atomically.

The only module of dhcpd that touches files. `save` writes a temporary file in the same
directory, fsyncs it, renames it over the old one and fsyncs the directory, so after a crash
the file holds either the old or the new contents, never a mix. A file that cannot be read
back is moved aside to `<name>.corrupt` (kept for the operator, never deleted) and reported
with a `LeaseStoreError` that names both paths.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import msgpack

_FORMAT = "qnet-dhcp-leases"
_VERSION = 1
MAX_FILE_SIZE = 16 * 1024 * 1024  # far above any bounded lease table; refuse anything bigger
_MAX_CORRUPT_KEPT = 8


class LeaseStoreError(Exception):
    """The lease file could not be read or written; the message names the file."""

    def __init__(self, message: str, path: Path, moved_to: Path | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.moved_to = moved_to


class LeaseStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        """The saved dict, or {} when nothing was saved yet. A corrupt file is moved aside
        and raises LeaseStoreError; the next load then returns {}."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise LeaseStoreError(f"lease file {self.path}: cannot read: {e}", self.path) from e
        try:
            return _decode(raw)
        except ValueError as e:
            moved = self._move_aside()
            raise LeaseStoreError(f"lease file {self.path} is corrupt ({e}); "
                                  f"moved to {moved}", self.path, moved) from None

    def save(self, data: dict[str, Any]) -> None:
        body = msgpack.packb(data, use_bin_type=True)
        blob = msgpack.packb({"format": _FORMAT, "version": _VERSION,
                              "crc32": zlib.crc32(body), "data": body}, use_bin_type=True)
        if len(blob) > MAX_FILE_SIZE:
            raise LeaseStoreError(f"lease file {self.path}: {len(blob)} bytes exceeds "
                                  f"{MAX_FILE_SIZE}", self.path)
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.tmp.{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            _fsync_dir(directory)  # make the rename itself durable
        except OSError as e:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise LeaseStoreError(f"lease file {self.path}: cannot write: {e}",
                                  self.path) from e

    def _move_aside(self) -> Path:
        # Keep a few generations of corrupt files; never overwrite the evidence of the last.
        target = self.path.with_name(self.path.name + ".corrupt")
        for i in range(1, _MAX_CORRUPT_KEPT):
            if not target.exists():
                break
            target = self.path.with_name(f"{self.path.name}.corrupt.{i}")
        os.replace(self.path, target)
        _fsync_dir(self.path.parent)
        return target


def _decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_FILE_SIZE:
        raise ValueError(f"larger than {MAX_FILE_SIZE} bytes")
    try:
        envelope = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"not msgpack: {type(e).__name__}") from None
    if not isinstance(envelope, dict) or envelope.get("format") != _FORMAT:
        raise ValueError("not a qnet lease file")
    if envelope.get("version") != _VERSION:
        raise ValueError(f"unsupported version {envelope.get('version')!r}")
    body = envelope.get("data")
    if not isinstance(body, bytes) or zlib.crc32(body) != envelope.get("crc32"):
        raise ValueError("checksum mismatch")
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:
        raise ValueError(f"payload not msgpack: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise ValueError("payload is not a map")
    return data


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
