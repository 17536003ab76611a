"""Attachment bytes on disk, named by their SHA-256 (issue 6 "Attachments"), never by anything a sender
wrote: the display name lives in the database row, the file is ``root/ab/cd/<sha256>``.

Content addressing makes a write idempotent (same bytes, same name) and makes a second copy of the
same file free. A write goes to a temporary file in the target directory, is fsynced, renamed over
the final name with ``os.replace`` (atomic on POSIX, rename(2)), and the directory is fsynced so the
new entry survives a crash (the file's own fsync does not cover its directory entry). A reader
therefore sees either no file or the whole file. Blocking file work runs in a worker thread
(``asyncio.to_thread``) so the event loop keeps serving.

Deleting: files may be shared (by several messages, or tenants), so only housekeeping removes them,
when no row refers to a hash any more (gateway/services/maintenance.py) and the file is older than a
grace period. Files are written before the transaction that refers to them commits, so a young file
may belong to a message still on its way in; :meth:`put` of bytes already stored refreshes the
file's time for the same reason. That sweep also takes the files a crash or a refused message left
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["AttachmentFiles"]

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DIR_MODE = 0o750
_FILE_MODE = 0o640


class AttachmentFiles:
    """The file store under ``root`` (normally ``data_dir/attachments``), created if missing."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the file with this hash lives. The hash is checked (64 lower-case hex digits) so that
        a path is only ever built from a value we computed, never from user input."""
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}"[:120])
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def storage_path(self, sha256: str, base: Path) -> str:
        """The file's path relative to ``base`` (``data_dir``), as stored in ``attachments.storage_path``."""
        return self.path_for(sha256).relative_to(base).as_posix()

    async def put(self, data: bytes) -> str:
        """Store ``data``; returns its SHA-256 hex. Writing bytes that are already stored does nothing."""
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, digest, data)
        return digest

    async def read(self, sha256: str) -> bytes:
        """The stored bytes (``FileNotFoundError`` when not stored)."""
        return await asyncio.to_thread(self.path_for(sha256).read_bytes)

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.path_for(sha256).is_file)

    def candidates(self, older_than: float, limit: int) -> list[str]:
        """Hashes of stored files last written before ``older_than`` (a POSIX time), at most
        ``limit``; stray temporary files that old are removed on the way (a crash mid-write)."""
        found: list[str] = []
        for first in sorted(self.root.iterdir()):
            if not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                if not second.is_dir():
                    continue
                for entry in second.iterdir():
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat().st_mtime >= older_than:
                            continue
                        if entry.name.startswith(".tmp-"):
                            entry.unlink()
                        elif _SHA256_HEX.fullmatch(entry.name):
                            found.append(entry.name)
                            if len(found) >= limit:
                                return found
        return found

    def remove(self, sha256: str, older_than: float) -> bool:
        """Delete the file if it is still older than ``older_than`` (not refreshed by a new put)."""
        path = self.path_for(sha256)
        try:
            if path.stat().st_mtime >= older_than:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _write(self, digest: str, data: bytes) -> None:
        final = self.path_for(digest)
        if final.is_file():
            # Already stored: mark it young again, so housekeeping leaves it to the transaction
            # that is about to refer to it.
            with contextlib.suppress(FileNotFoundError):
                os.utime(final)
            return
        directory = final.parent
        created = not directory.is_dir()
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fchmod(out.fileno(), _FILE_MODE)
                os.fsync(out.fileno())
            # Two writers racing on the same bytes both rename identical content: either wins.
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise
        _fsync_dir(directory)
        if created:  # the new ab/ and ab/cd/ entries must survive a crash too
            _fsync_dir(directory.parent)
            _fsync_dir(self.root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
