"""One compose project of the shipped docker-compose.yml, with the stand-in images of
deploy/stand-ins/compose.yml, driven by the compose command a user would run."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.deploy import engine
from tests.processes import free_port

PROJECT = "pfpcomposetest"
COMPOSE_FILES = [engine.ROOT / "docker-compose.yml", engine.STAND_INS / "compose.yml"]
# Environment that would change what compose deploys: a developer's shell must not.
STACK_VARIABLES = (
    "ADMIN_API_KEYS",
    "API_BIND",
    "API_PORT",
    "BOOTSTRAP_MAX_STEPS",
    "COMPOSE_FILE",
    "COMPOSE_PROFILES",
    "PFP_IMAGE",
    "PROMETHEUS_PORT",
)


def free_port_pair() -> int:
    """A port P with P+1 free too: the API publishes P-P+1, one port per replica."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and _free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Stack:
    """One compose project, driven by the compose command a user would run."""

    api_port: int
    env_file: Path
    prometheus_port: int = field(default_factory=free_port)
    command: list[str] = field(default_factory=engine.compose_command)

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        env = {k: v for k, v in os.environ.items() if k not in STACK_VARIABLES}
        # Published on loopback only, a port range so that `--scale api=2` can publish both.
        env.update(API_BIND="127.0.0.1", API_PORT=f"{self.api_port}-{self.api_port + 1}")
        env.update(PROMETHEUS_PORT=str(self.prometheus_port))
        argv = [*self.command, "--project-name", PROJECT, "--env-file", str(self.env_file)]
        for path in COMPOSE_FILES:
            argv += ["-f", str(path)]
        done = subprocess.run(
            [*argv, *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"compose {' '.join(args)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-4000:]}\n{self.diagnostics()}"
            )
        return done.stdout + done.stderr

    def containers(self, service: str | None = None, running: bool = False) -> list[dict]:
        """The project's containers (all replicas), as `docker inspect` gives them."""
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]
        if not running:
            argv.append("-a")
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = engine.run(argv).split()
        if not ids:
            return []
        found = json.loads(engine.run(["docker", "inspect", *ids]))
        return sorted(found, key=lambda c: c["Config"]["Labels"]["com.docker.compose.service"])

    def url(self, replica: int = 1) -> str:
        """The API replica's published address on 127.0.0.1."""
        # check=False: callers poll this while a replica restarts, and a failure here is
        # not worth every container's logs each time.
        out = self.compose("port", "--index", str(replica), "api", "8000", check=False)
        address = out.strip().splitlines()[-1] if out.strip() else ""
        if not re.fullmatch(r"127\.0\.0\.1:\d+", address):
            raise AssertionError(f"api replica {replica} publishes no port yet: {out.strip()!r}")
        return f"http://{address}"

    def prometheus_url(self) -> str:
        """Prometheus's published address on 127.0.0.1 (profile "monitoring")."""
        return f"http://127.0.0.1:{self.prometheus_port}"

    def exec(self, service: str, *argv: str) -> str:
        return self.compose("exec", "-T", service, *argv)

    def sql(self, query: str) -> str:
        """One value from the stack's PostgreSQL, asked inside its container."""
        return self.exec("postgres", "psql", "-U", "pfp", "-d", "pfp", "-tAc", query).strip()

    def admin_key(self) -> str:
        return self.exec("api", "cat", "/data/admin_api_key").strip()

    def wait_ready(self, replica: int = 1, timeout: float = 300) -> dict:
        """/readyz of one replica through its published port; its body once it is 200."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"{self.url(replica)}/readyz", timeout=5)
                if answer.status_code == 200:
                    return answer.json()
                last = f"{answer.status_code} {answer.text}"
            except (httpx.HTTPError, AssertionError) as exc:
                last = repr(exc)
            time.sleep(1)
        raise AssertionError(
            f"api replica {replica} not ready in {timeout} s: {last}\n{self.diagnostics()}"
        )

    def wait_healthy(self, services: set[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = {
                f"{c['Config']['Labels']['com.docker.compose.service']}"
                f"_{c['Config']['Labels']['com.docker.compose.container-number']}": (
                    c["State"].get("Health", {}).get("Status", c["State"]["Status"])
                )
                for c in self.containers(running=True)
                if c["Config"]["Labels"]["com.docker.compose.service"] in services
            }
            seen = {name.rsplit("_", 1)[0] for name in states}
            if seen == services and all(s == "healthy" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not all healthy in {timeout} s: {states}\n{self.diagnostics()}"
                )
            time.sleep(2)

    def diagnostics(self) -> str:
        """What a failure message needs: every container's state and its last log lines."""
        lines = []
        try:
            for c in self.containers():
                name = c["Name"].lstrip("/")
                lines.append(f"--- {name}: {c['State']['Status']} exit {c['State']['ExitCode']}")
                logs = subprocess.run(
                    ["docker", "logs", "--tail", "25", c["Id"]],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                lines.append((logs.stdout + logs.stderr).rstrip())
        except Exception as exc:  # diagnostics must never hide the real failure
            lines.append(f"(no diagnostics: {exc!r})")
        return "\n".join(lines)


# Figures the run measured, and what each dashboard panel's query answered, printed at its
# end (tests/deploy/conftest.py).
FIGURES: dict[str, object] = {}
PANELS: dict[str, str] = {}
