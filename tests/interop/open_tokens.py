#!/usr/bin/env python3
"""Opens Fernet tokens with nothing but `cryptography`.

Reads lines `KEY TOKEN SHA256` (space-separated) from stdin, where SHA256 is
the hex digest of the plaintext the token must hold, and prints one JSON
object: how many tokens opened with the right plaintext, and the first
failure, if any. Used by tests/it/python_interop.rs.
"""
import hashlib
import json
import sys

from cryptography.fernet import Fernet, InvalidToken

opened = 0
failure = None
for n, line in enumerate(sys.stdin, 1):
    key, token, digest = line.split()
    try:
        plain = Fernet(key.encode()).decrypt(token.encode())
    except InvalidToken:
        failure = failure or f"line {n}: InvalidToken"
        continue
    if hashlib.sha256(plain).hexdigest() != digest:
        failure = failure or f"line {n}: wrong plaintext"
        continue
    opened += 1
print(json.dumps({"opened": opened, "failure": failure}))
