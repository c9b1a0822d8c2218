#!/usr/bin/env python3
"""Opens a case-export `.enc` file with nothing but standard Fernet.

Usage: CASE_EXPORT_KEY=<fernet key> python3 decrypt.py FILE.enc

Every line of the file is one Fernet token, decrypted with
`cryptography.fernet.Fernet(key).decrypt(line)` and nothing else. Each
plaintext starts with the 40-byte chunk header of docs/FORMAT.md:

    offset  size  field
    0       4     magic b"CXF1"
    4       1     flags (bit 0: final chunk; other bits zero)
    5       3     reserved, zero
    8       16    export id, the same in every chunk
    24      8     chunk index, big-endian, 0, 1, 2, ...
    32      8     total plaintext length, big-endian, the same in every chunk

followed by the chunk's data. The data, in order, is a SQLite database;
this script checks it with SQLite itself and prints a JSON summary on
stdout. Any violation is reported on stderr with exit status 1.
"""

import hashlib
import json
import os
import sqlite3
import struct
import sys
import tempfile

from cryptography.fernet import Fernet, InvalidToken

MAGIC = b"CXF1"
HEADER = struct.Struct(">4sB3s16sQQ")
FLAG_FINAL = 0x01
MANIFEST = "_export_manifest"

assert HEADER.size == 40


def fail(message):
    print(f"decrypt.py: {message}", file=sys.stderr)
    sys.exit(1)


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def read_chunks(raw, fernet):
    if not raw:
        fail("the file is empty")
    if not raw.endswith(b"\n"):
        fail("the last token is not followed by a newline")
    lines = raw[:-1].split(b"\n")
    data = bytearray()
    export_id = None
    total = None
    chunk_sizes = []
    for index, line in enumerate(lines):
        try:
            plain = fernet.decrypt(line)
        except InvalidToken:
            fail(f"chunk {index} failed authentication")
        if len(plain) < HEADER.size:
            fail(f"chunk {index} is shorter than the 40-byte header")
        magic, flags, reserved, eid, idx, tot = HEADER.unpack_from(plain)
        if magic != MAGIC:
            fail(f"chunk {index}: bad magic {magic!r}")
        if flags & ~FLAG_FINAL:
            fail(f"chunk {index}: unknown flags {flags:#04x}")
        if reserved != b"\0\0\0":
            fail(f"chunk {index}: reserved bytes are not zero")
        if index == 0:
            export_id, total = eid, tot
        elif eid != export_id:
            fail(f"chunk {index}: export id differs from chunk 0")
        elif tot != total:
            fail(f"chunk {index}: total length differs from chunk 0")
        if idx != index:
            fail(f"chunk {index}: header says index {idx}")
        is_final = bool(flags & FLAG_FINAL)
        if is_final != (index == len(lines) - 1):
            fail(f"chunk {index}: final flag {is_final} on chunk {index} of {len(lines)}")
        chunk = plain[HEADER.size:]
        chunk_sizes.append(len(chunk))
        data += chunk
    if len(data) != total:
        fail(f"chunks hold {len(data)} bytes, headers declare {total}")
    if len(chunk_sizes) > 1:
        size = chunk_sizes[0]
        if size == 0 or any(s != size for s in chunk_sizes[:-1]):
            fail(f"non-final chunks differ in size: {chunk_sizes}")
        if not 0 <= chunk_sizes[-1] <= size:
            fail(f"final chunk of {chunk_sizes[-1]} bytes exceeds the chunk size {size}")
    return bytes(data), export_id.hex(), len(lines), chunk_sizes[0]


def inspect(db_path):
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        integrity = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        row = conn.execute(
            f"SELECT format_version, export_id, case_id, root_table, row_counts "
            f"FROM {MANIFEST}"
        ).fetchone()
        if row is None:
            fail(f"{MANIFEST} has no row")
        format_version, export_id, case_id, root_table, counts_json = row
        recorded = json.loads(counts_json)
        tables = {}
        for table in sorted(recorded):
            (actual,) = conn.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()
            tables[table] = {"manifest": recorded[table], "actual": actual}
        (root_rows,) = conn.execute(f"SELECT count(*) FROM {quote(root_table)}").fetchone()
        return {
            "integrity_check": integrity,
            "manifest": {
                "format_version": format_version,
                "export_id": export_id,
                "case_id": case_id,
                "root_table": root_table,
            },
            "root_rows": root_rows,
            "tables": tables,
        }
    finally:
        conn.close()


def main():
    if len(sys.argv) != 2:
        fail("usage: CASE_EXPORT_KEY=<key> decrypt.py FILE.enc")
    key = os.environ.get("CASE_EXPORT_KEY", "").strip()
    if not key:
        fail("set CASE_EXPORT_KEY to the export's Fernet key")
    try:
        fernet = Fernet(key)
    except ValueError as e:
        fail(f"not a Fernet key: {e}")
    with open(sys.argv[1], "rb") as f:
        raw = f.read()
    data, export_id, chunks, chunk_size = read_chunks(raw, fernet)
    with tempfile.TemporaryDirectory() as tmp:
        db_path = os.path.join(tmp, "case.db")
        fd = os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        summary = inspect(db_path)
    summary.update(
        {
            "chunks": chunks,
            "chunk_size": chunk_size,
            "bytes": len(data),
            "export_id": export_id,
            "ciphertext_sha256": hashlib.sha256(raw).hexdigest(),
            "plaintext_sha256": hashlib.sha256(data).hexdigest(),
        }
    )
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
