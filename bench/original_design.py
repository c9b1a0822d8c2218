#!/usr/bin/env python3
"""The original design, reproduced for comparison (see ../shared/ORIGIN.md).

The original OfflineStorageService made one Fernet key per export, encrypted
the WHOLE case database in one Fernet token, hex-encoded the token and
returned it in one JSON body:

    {"encrypted_data": hex, "encryption_key": key,
     "filename": "case_offline_<id>.enc", "warning": "..."}

This script does exactly that to the bytes of a snapshot file (written by
benches/export/) and prints one JSON line with the time of each phase and
the process's peak RSS. Reading the file is not timed (the original had the
bytes in memory already); everything from key generation to the encoded
response body is. Peak RSS is VmHWM from /proc/self/status (see below for
why not ru_maxrss alone).

Usage: original_design.py SNAPSHOT_FILE [CASE_ID]
"""
import json
import resource
import sys
import time

from cryptography.fernet import Fernet

WARNING = "Store this key securely. Without it, the encrypted data cannot be decrypted."


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


def main() -> None:
    path = sys.argv[1]
    case_id = sys.argv[2] if len(sys.argv) > 2 else "bench"
    with open(path, "rb") as f:
        data = f.read()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    t0 = time.perf_counter()
    key = Fernet.generate_key()
    token = Fernet(key).encrypt(data)  # the whole snapshot in one token
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

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "plaintext_bytes": len(data),
        "token_bytes": len(token),
        "body_bytes": len(body),
        "seconds": t3 - t0,
        "encrypt_seconds": t1 - t0,
        "hex_seconds": t2 - t1,
        "json_seconds": t3 - t2,
        "mb_per_s": len(data) / (t3 - t0) / 1e6,
        # VmHWM: this process's own peak. ru_maxrss is reported too, but on
        # Linux it also takes in the peak of the address space replaced by
        # exec: a parent that spawns this script with vfork (as Rust's
        # Command does) lends it its own peak RSS.
        "peak_rss_bytes": vm_hwm() or maxrss,
        "ru_maxrss_bytes": maxrss,
        "rss_after_read_bytes": rss_loaded,
        "python": sys.version.split()[0],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
