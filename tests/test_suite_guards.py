"""The suite's own guards: no test may reach the network or leave files in the checkout (tests/conftest.py)."""

import os
import socket
import subprocess
import sys

import pytest


def test_a_connection_to_another_host_is_refused_and_recorded_in_every_process(tmp_path, monkeypatch):
    log = tmp_path / "network.log"
    monkeypatch.setenv("TEST_NETWORK_LOG", str(log))  # this test's attempts go to its own log, not the suite's
    with pytest.raises(ConnectionRefusedError, match="no network connection"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed
    code = "import socket; socket.create_connection(('192.0.2.1', 443), timeout=1)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode != 0 and "no network connection" in proc.stderr  # a child process is guarded too
    recorded = [line.split(maxsplit=1)[1] for line in log.read_text().splitlines()]
    assert recorded == ["('192.0.2.1', 80)", "('192.0.2.1', 443)"]


def test_loopback_connections_stay_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
        pass
    server.close()
