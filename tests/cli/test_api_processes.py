"""API processes behind one port, each on a socket of its own (app/cli/api_processes.py)."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys

import pytest

from app.cli.api_processes import ReusePortAddress, check_port_free
from tests.processes import ROOT, free_port, service_env


def test_each_process_binds_a_socket_of_its_own_on_the_one_port() -> None:
    """What uvicorn's supervisor hands a new process becomes, there, a socket bound to the
    port beside its siblings', so the kernel can spread connections over them."""
    port = free_port()
    address = ReusePortAddress("127.0.0.1", port)
    first, second = (pickle.loads(pickle.dumps(address)) for _ in range(2))
    try:
        for sock in (first, second):
            assert isinstance(sock, socket.socket)
            assert sock.getsockname() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        first.listen()
        second.listen()
        # Connections go to both listening sockets, none is refused.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        first.setblocking(False)
        second.setblocking(False)
        accepted = {"first": 0, "second": 0}
        for name, sock in (("first", first), ("second", second)):
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                accepted[name] += 1
        for client in clients:
            client.close()
        assert sum(accepted.values()) == 32
        assert min(accepted.values()) >= 4, accepted  # binomial(32, 1/2): fails 1 in 10^5
    finally:
        first.close()
        second.close()


def test_a_port_in_use_is_refused_before_any_process_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            check_port_free("127.0.0.1", port)


def test_api_with_several_processes_on_a_taken_port_exits_with_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Not a silent share of the port with whatever listens there (SO_REUSEPORT would let
    a second service of ours join the first's group)."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = service_env(data_dir=tmp_path / "data", api_processes=2, torch_threads=1)
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr + done.stdout
