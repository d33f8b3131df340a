"""Files (OpenAI's Files API): metadata in ``files``, bytes in ``file_chunks``.

A file is written chunk by chunk as it arrives and read back chunk by chunk, so an
upload of 200 MB never sits whole in memory. Blocking; callers run it on a thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from tokenomy.core.ids import UniqueIds
from tokenomy.store.schema import file_chunks, files

#: Bytes per stored chunk.
CHUNK_BYTES = 1 << 20

_FILE_IDS = UniqueIds("file-", width=8)


def new_file_id() -> str:
    return _FILE_IDS.next()


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    lines: int
    created_at: int

    def openai(self) -> dict[str, Any]:
        """The file as OpenAI's ``FileObject``."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def put_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        """One chunk of a file being written (the file row comes last, in ``finish``)."""
        with self.engine.begin() as conn:
            conn.execute(insert(file_chunks).values(file_id=file_id, seq=seq, data=data))

    def finish(self, f: StoredFile) -> None:
        """Make a file whose chunks are written visible."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(files).values(
                    id=f.id,
                    owner=f.owner,
                    purpose=f.purpose,
                    filename=f.filename,
                    bytes=f.bytes,
                    lines=f.lines,
                    created_at=f.created_at,
                )
            )

    def discard_chunks(self, file_id: str) -> None:
        """Drop the chunks of an upload that was refused or cut off."""
        with self.engine.begin() as conn:
            conn.execute(delete(file_chunks).where(file_chunks.c.file_id == file_id))

    def get(self, file_id: str, owner: str) -> StoredFile | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(files).where(files.c.id == file_id, files.c.owner == owner)
            ).first()
        return _file(row._mapping) if row is not None else None

    def page(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int
    ) -> list[StoredFile]:
        """The owner's files, newest first (ids sort by creation within a process)."""
        t = files
        q = select(t).where(t.c.owner == owner)
        if purpose:
            q = q.where(t.c.purpose == purpose)
        with self.engine.connect() as conn:
            if after:  # keyset by (creation second, id), as batches are paged
                at = conn.execute(select(t.c.created_at).where(t.c.id == after)).scalar()
                if at is None:
                    return []
                q = q.where((t.c.created_at < at) | ((t.c.created_at == at) & (t.c.id < after)))
            q = q.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
            return [_file(r._mapping) for r in conn.execute(q)]

    def delete(self, file_id: str, owner: str) -> bool:
        with self.engine.begin() as conn:
            n = conn.execute(
                delete(files).where(files.c.id == file_id, files.c.owner == owner)
            ).rowcount
            if n:
                conn.execute(delete(file_chunks).where(file_chunks.c.file_id == file_id))
        return bool(n)

    def chunk(self, file_id: str, seq: int) -> bytes | None:
        with self.engine.connect() as conn:
            q = select(file_chunks.c.data).where(
                file_chunks.c.file_id == file_id, file_chunks.c.seq == seq
            )
            data = conn.execute(q).scalar()
        return bytes(data) if data is not None else None


def _file(m: Any) -> StoredFile:
    return StoredFile(
        id=m["id"],
        owner=m["owner"],
        purpose=m["purpose"],
        filename=m["filename"],
        bytes=int(m["bytes"]),
        lines=int(m["lines"]),
        created_at=int(m["created_at"]),
    )


def now_s() -> int:
    return int(time.time())
