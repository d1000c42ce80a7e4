"""Loaded by every Python process the test suite starts (tests/conftest.py puts this folder on PYTHONPATH): any
connection to a host other than this machine is refused and recorded, so that the suite can fail on it."""

import os
import socket

_connect = socket.socket.connect
LOCAL = ("127.", "::1", "localhost", "0.0.0.0")


def _guarded_connect(self, address, *args, **kwargs):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and not str(host).startswith(LOCAL):
        with open(os.environ["TEST_NETWORK_LOG"], "a") as log:
            log.write(f"{os.getpid()} {address}\n")
        raise ConnectionRefusedError(f"the test suite allows no network connection (tried {address})")
    return _connect(self, address, *args, **kwargs)


if os.environ.get("TEST_NETWORK_LOG"):
    socket.socket.connect = _guarded_connect
