"""The content-addressed attachment store on a real file system."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from pathlib import Path

import pytest

from gateway.storage.attachment_files import AttachmentFiles


async def test_put_read_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "data" / "attachments"
    files = AttachmentFiles(root)
    assert root.is_dir()
    assert stat.S_IMODE(root.stat().st_mode) & 0o027 == 0  # 0o750 (less with a stricter umask)

    digest = await files.put(b"%PDF-1.7 hello")
    assert digest == hashlib.sha256(b"%PDF-1.7 hello").hexdigest()
    path = files.path_for(digest)
    assert path == root / digest[:2] / digest[2:4] / digest
    assert path.read_bytes() == b"%PDF-1.7 hello"
    assert await files.read(digest) == b"%PDF-1.7 hello"
    assert await files.exists(digest)
    assert files.storage_path(digest, tmp_path / "data") == f"attachments/{digest[:2]}/{digest[2:4]}/{digest}"
    # no temporary files left behind
    assert [p.name for p in path.parent.iterdir()] == [digest]


async def test_put_is_idempotent(tmp_path: Path) -> None:
    files = AttachmentFiles(tmp_path)
    digest = await files.put(b"same bytes")
    path = files.path_for(digest)
    before = path.stat()
    assert await files.put(b"same bytes") == digest
    after = path.stat()
    assert before.st_ino == after.st_ino and path.read_bytes() == b"same bytes"  # nothing rewritten
    # ...but its time is refreshed, so housekeeping leaves it to the message about to refer to it.
    assert after.st_mtime_ns >= before.st_mtime_ns


async def test_concurrent_puts_of_the_same_and_different_bytes(tmp_path: Path) -> None:
    files = AttachmentFiles(tmp_path)
    blobs = [b"a" * 100_000, b"b" * 10, b"a" * 100_000, b"", b"b" * 10]
    digests = await asyncio.gather(*(files.put(b) for b in blobs))
    for blob, digest in zip(blobs, digests, strict=True):
        assert await files.read(digest) == blob
    stored = sorted(p for p in tmp_path.rglob("*") if p.is_file())  # noqa: ASYNC240 - test inspection
    assert len(stored) == 3
    assert all(not p.name.startswith(".tmp-") for p in stored)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc/passwd",
        "/etc/passwd",
        "a" * 63,
        "a" * 65,
        "A" * 64,  # upper-case: we only ever write lower-case hex
        "g" * 64,
        "../" + "a" * 61,
        "a" * 63 + "\n",
        "a" * 32 + "/" + "a" * 31,
    ],
)
async def test_path_for_refuses_anything_but_a_digest(tmp_path: Path, bad: str) -> None:
    files = AttachmentFiles(tmp_path)
    with pytest.raises(ValueError):
        files.path_for(bad)
    with pytest.raises(ValueError):
        await files.read(bad)


async def test_read_of_a_missing_digest(tmp_path: Path) -> None:
    files = AttachmentFiles(tmp_path)
    with pytest.raises(FileNotFoundError):
        await files.read("0" * 64)
    assert not await files.exists("0" * 64)


async def test_files_land_only_under_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    files = AttachmentFiles(root)
    for i in range(50):
        await files.put(os.urandom(16) + bytes([i]))
    assert list(outside.iterdir()) == []
    for p in tmp_path.rglob("*"):  # noqa: ASYNC240 - test inspection
        if p.is_file():
            assert root in p.parents
            assert p.resolve().is_relative_to(root.resolve())
            assert stat.S_IMODE(p.stat().st_mode) == 0o640
