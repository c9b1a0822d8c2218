#!/usr/bin/env python3
"""The original design, reproduced for comparison (see ../shared/ORIGIN.md).

The original OfflineStorageService made one Fernet key per export, encrypted
the WHOLE case database in one Fernet token, hex-encoded the token and
returned it in one JSON body:

    {"encrypted_data": hex, "encryption_key": key,
     "filename": "case_offline_<id>.enc", "warning": "..."}

Two modes, each printing one JSON line with the time of each phase and the
process's peak RSS (VmHWM from /proc/self/status; see below for why not
ru_maxrss alone):

  original_design.py SNAPSHOT_FILE [CASE_ID]
      Encryption only: does the above to the bytes of a snapshot file
      (written by benches/export/). Reading the file is not timed (the bytes
      are taken as already in memory); everything from key generation to
      the encoded response body is ("seconds").

  original_design.py --build SOURCE_DB CASE_ID
      From the request to the body, building the case database first, as
      the original service had to: Python's sqlite3 creates a new database
      in a temporary file (the original encrypted "the case data (SQLite
      database)" as bytes, and a file is what a service of its time would
      write: Connection.serialize() only came with Python 3.11), attaches
      the source read-only, creates the case tables from the source's
      definitions, copies the case's rows table by table with one
      `INSERT ... SELECT` each (by case_id, or through the parent's id for
      tables without it), creates the indexes, commits, closes, reads the
      file's bytes, then Fernet, hex and JSON as above. "build_seconds" is
      temp file to closed database, "read_seconds" the file read,
      "seconds" encryption to body as in the first mode, "total_seconds"
      all of it. Indexes are created after the copy (cheaper than keeping
      them up to date row by row), so the baseline is not handicapped.
"""
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
import urllib.parse

from cryptography.fernet import Fernet

WARNING = "Store this key securely. Without it, the encrypted data cannot be decrypted."

# The demo schema (schema/cases.sql), parents before children: each table
# with the WHERE clause selecting the case's rows, as the original's
# developer would write them. `users` is system data and stays behind.
# evidence_links needs both ends in the case, as in case-export's snapshot
# (a link across cases is in neither export).
CASE_EVIDENCE = "(SELECT id FROM src.evidence WHERE case_id = :case)"
CASE_TABLES = [
    ("cases", "id = :case"),
    ("subjects", "case_id = :case"),
    ("transactions", "case_id = :case"),
    ("analysis_results", "case_id = :case"),
    (
        "indicators",
        "analysis_id IN (SELECT id FROM src.analysis_results WHERE case_id = :case)",
    ),
    ("evidence", "case_id = :case"),
    ("evidence_documents", f"evidence_id IN {CASE_EVIDENCE}"),
    ("evidence_photos", f"evidence_id IN {CASE_EVIDENCE}"),
    ("evidence_emails", f"evidence_id IN {CASE_EVIDENCE}"),
    (
        "evidence_links",
        f"from_evidence_id IN {CASE_EVIDENCE} AND to_evidence_id IN {CASE_EVIDENCE}",
    ),
    ("annotations", f"evidence_id IN {CASE_EVIDENCE}"),
    ("notes", "case_id = :case"),
    ("custody_events", f"evidence_id IN {CASE_EVIDENCE}"),
]


def vm_hwm() -> int:
    """Peak resident set size of this process from /proc, in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def encrypt_to_body(data: bytes, case_id: str) -> dict:
    """Key, one Fernet token, hex, one JSON body: the original's response."""
    t0 = time.perf_counter()
    key = Fernet.generate_key()
    token = Fernet(key).encrypt(data)  # the whole database in one token
    t1 = time.perf_counter()
    encrypted_hex = token.hex()
    t2 = time.perf_counter()
    body = json.dumps(
        {
            "encrypted_data": encrypted_hex,
            "encryption_key": key.decode(),
            "filename": f"case_offline_{case_id}.enc",
            "warning": WARNING,
        }
    ).encode()  # what the web framework would put on the wire
    t3 = time.perf_counter()
    return {
        "plaintext_bytes": len(data),
        "token_bytes": len(token),
        "body_bytes": len(body),
        "seconds": t3 - t0,
        "encrypt_seconds": t1 - t0,
        "hex_seconds": t2 - t1,
        "json_seconds": t3 - t2,
        "mb_per_s": len(data) / (t3 - t0) / 1e6,
    }


def build_case_db(source: str, case_id: str, path: str) -> dict:
    """Copies the case's rows of `source` into a new database at `path`."""
    conn = sqlite3.connect(path, uri=True)  # uri: the ATTACH below is a URI
    src = "file:" + urllib.parse.quote(os.path.abspath(source)) + "?mode=ro"
    conn.execute("ATTACH DATABASE ? AS src", (src,))
    names = [t for t, _ in CASE_TABLES]
    marks = ",".join("?" * len(names))
    ddl = dict(
        conn.execute(
            f"SELECT name, sql FROM src.sqlite_master WHERE type = 'table' AND name IN ({marks})",
            names,
        ).fetchall()
    )
    for t in names:
        conn.execute(ddl[t])
    rows = {}
    # One transaction (the module opens it before the first INSERT).
    for t, where in CASE_TABLES:
        cur = conn.execute(
            f"INSERT INTO main.{t} SELECT * FROM src.{t} WHERE {where}", {"case": case_id}
        )
        rows[t] = cur.rowcount
    indexes = conn.execute(
        "SELECT sql FROM src.sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        f"AND tbl_name IN ({marks})",
        names,
    ).fetchall()
    for (sql,) in indexes:
        conn.execute(sql)
    conn.commit()
    conn.execute("DETACH DATABASE src")
    conn.close()
    return rows


def main() -> None:
    build = len(sys.argv) > 1 and sys.argv[1] == "--build"
    out = {}
    if build:
        source, case_id = sys.argv[2], sys.argv[3]
        t0 = time.perf_counter()  # the request arrives
        fd, path = tempfile.mkstemp(prefix="case_offline_", suffix=".db")
        os.close(fd)
        try:
            rows = build_case_db(source, case_id, path)
            t1 = time.perf_counter()
            with open(path, "rb") as f:
                data = f.read()
            t2 = time.perf_counter()
            enc = encrypt_to_body(data, case_id)
            t3 = time.perf_counter()
        finally:
            os.unlink(path)  # after the body is ready: not timed
        out.update(enc)
        out.update(
            {
                "build_seconds": t1 - t0,
                "read_seconds": t2 - t1,
                "total_seconds": t3 - t0,
                "rows": sum(rows.values()),
                "rows_by_table": rows,
                "sqlite": sqlite3.sqlite_version,
            }
        )
        rss_loaded = 0
    else:
        path = sys.argv[1]
        case_id = sys.argv[2] if len(sys.argv) > 2 else "bench"
        with open(path, "rb") as f:
            data = f.read()
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(encrypt_to_body(data, case_id))

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.update(
        {
            # VmHWM: this process's own peak. ru_maxrss is reported too, but on
            # Linux it also takes in the peak of the address space replaced by
            # exec: a parent that spawns this script with vfork (as Rust's
            # Command does) lends it its own peak RSS.
            "peak_rss_bytes": vm_hwm() or maxrss,
            "ru_maxrss_bytes": maxrss,
            "rss_after_read_bytes": rss_loaded,
            "python": sys.version.split()[0],
        }
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
