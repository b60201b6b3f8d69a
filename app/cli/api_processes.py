"""Several API processes behind one port, each accepting on a listening socket of its own.

uvicorn's `workers=N` binds one socket in the parent and every process accepts on it. An
asyncio server that wakes to a waiting connection accepts every connection queued then
(up to the backlog), so the process that wakes first takes a burst of a client's
keep-alive connections and its siblings few, and one core saturates while another idles
(the splits measured: docs/benchmarks.md). Here each process binds its own socket with
SO_REUSEPORT, and the kernel spreads new connections over the listening sockets by a hash
of their addresses, so each of N processes gets about 1/N of them.

uvicorn's supervisor is kept (health pings, restarting a process that dies, signals):
what it hands each new process is not a socket but a `ReusePortAddress`, which binds a
fresh socket when the process unpickles it. So a socket lives only in its process: one
that dies, or is still loading its model, is not in the group and is given no connection.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.supervisors import Multiprocess


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (the address in use, or a privileged port) before any process starts.

    The probe binds without SO_REUSEPORT, which fails while anything listens on the port,
    our own processes included; the sockets of the processes would silently join such a
    listener's group and share its traffic."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        # As uvicorn does: connections of an earlier run in TIME_WAIT do not block a restart.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def bind_reuse_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) in the port's SO_REUSEPORT group; uvicorn listens."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # In a starting process: uvicorn's supervisor stops at this exit code instead of
        # restarting a process that would fail the same way forever.
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILURE)
    return sock


@dataclass(frozen=True)
class ReusePortAddress:
    """Where to listen; becomes a bound socket when unpickled in a new process."""

    host: str
    port: int

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return bind_reuse_port, (self.host, self.port)


def run_processes(config: Config, processes: int) -> None:
    """Run `config`'s app in `processes` processes on (config.host, config.port)."""
    check_port_free(config.host, config.port)
    config.workers = processes
    address = cast(socket.socket, ReusePortAddress(config.host, config.port))
    Multiprocess(config, sockets=[address]).run()
