"""A Docker engine and the images the compose test runs, on a machine with no image registry.

`make test-compose` must pass on a fresh machine of this project's kind, where Docker is
not installed, no daemon runs, and `python:3.11-slim`, `postgres:16`, `redis:7` and
`prom/prometheus` cannot be pulled (nor Grafana's image, which has no stand-in: Debian
does not package Grafana). So this module:

- installs Debian's docker.io, docker-compose and debootstrap where they are missing (as
  root; otherwise it says what to install) and starts `dockerd` where none answers;
- builds stand-ins with the official images' interface from Debian's packages
  (deploy/stand-ins/), on a Debian base made with debootstrap; they are cached as images
  between runs on the same machine and only rebuilt when their files change;
- builds the app image from the shipped Dockerfile, with build arguments that point it at
  the stand-in base and at a torch wheel already on this machine (pip's find-links).

Everything it builds is named `pfp-test/...` or `pfp-service:compose-test`, so it never
shadows an image a user pulled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAND_INS = ROOT / "deploy" / "stand-ins"
WHEELS = ROOT / "deploy" / "wheels"

DEBIAN_IMAGE = "pfp-test/debian:bookworm"
PYTHON_IMAGE = "pfp-test/python:3.11"
POSTGRES_IMAGE = "pfp-test/postgres:15"
REDIS_IMAGE = "pfp-test/redis:7"
PROMETHEUS_IMAGE = "pfp-test/prometheus:2.42"
APP_IMAGE = "pfp-service:compose-test"
DEBIAN_MIRROR = os.environ.get("PFP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Where the host keeps extra certificate authorities (a TLS-inspecting egress proxy's):
# pip inside image builds must trust them too.
HOST_EXTRA_CA = Path("/usr/local/share/ca-certificates")
TORCH_WHEEL_GLOB = "torch-2.13.0+cpu-cp311-*.whl"
DAEMON_LOG = Path("/var/log/pfp-test-dockerd.log")


class EngineUnavailable(RuntimeError):
    """No Docker engine could be found, installed or started here."""


def log(message: str) -> None:
    print(f"[compose-test] {message}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 900, **kwargs: object) -> str:
    """Run a command, return its stdout; on failure raise with the tail of its output."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{tail}")
    return done.stdout


def _answers(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --- the engine ----------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (v2) where the plugin exists, else Debian's `docker-compose` 1.29."""
    if _answers(["docker", "compose", "version"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise EngineUnavailable("neither `docker compose` nor `docker-compose` is installed")


def _install_packages() -> None:
    missing = [
        package
        for package, command in (
            ("docker.io", "dockerd"),
            ("docker-compose", "docker-compose"),
            ("debootstrap", "debootstrap"),
        )
        if not shutil.which(command)
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineUnavailable(
            f"the compose test needs {', '.join(missing)}: apt-get install -y {' '.join(missing)}"
        )
    log(f"installing {', '.join(missing)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *missing], env=env)


def ensure_engine() -> None:
    """A daemon that answers `docker info`: installed and started here if need be."""
    _install_packages()
    if _answers(["docker", "info"]):
        return
    if os.geteuid() != 0:
        raise EngineUnavailable("no Docker daemon answers and only root can start one here")
    log(f"starting dockerd (log: {DAEMON_LOG})")
    # No systemd here. --iptables=false: this machine has no NAT to set up, and everything
    # the test sends goes through ports published on 127.0.0.1 (docker-proxy).
    with DAEMON_LOG.open("ab") as out:
        subprocess.Popen(
            ["dockerd", "--iptables=false"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _answers(["docker", "info"]):
            return
        time.sleep(1)
    raise EngineUnavailable(f"dockerd did not answer within 60 s; see {DAEMON_LOG}")


# --- images --------------------------------------------------------------------------


def image_exists(name: str) -> bool:
    return _answers(["docker", "image", "inspect", name])


def image_size_bytes(name: str) -> int:
    return int(run(["docker", "image", "inspect", "--format", "{{.Size}}", name]).strip())


def _debian_base() -> None:
    """Debian bookworm from debootstrap, imported once: the root of every stand-in."""
    if image_exists(DEBIAN_IMAGE):
        return
    log(f"building {DEBIAN_IMAGE} with debootstrap from {DEBIAN_MIRROR} (a minute or two)")
    with tempfile.TemporaryDirectory(prefix="pfp-rootfs-") as rootfs:
        run(["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR], timeout=1200)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "-", DEBIAN_IMAGE], stdin=tar.stdout)
        if tar.wait() != 0:
            raise RuntimeError(f"tar of {rootfs} failed")


def _copy_host_certificates() -> None:
    target = STAND_INS / "python" / "extra-ca"
    for crt in sorted(HOST_EXTRA_CA.glob("*.crt")) if HOST_EXTRA_CA.is_dir() else []:
        if not (target / crt.name).exists():
            shutil.copy(crt, target / crt.name)


def docker_build(tag: str, context: Path, *build_args: str) -> float:
    """`docker build` on the host network (packages come from the registries); seconds."""
    started = time.monotonic()
    argv = ["docker", "build", "--network", "host", "-t", tag]
    for arg in build_args:
        argv += ["--build-arg", arg]
    run([*argv, str(context)], timeout=1800)
    return time.monotonic() - started


def build_stand_ins() -> None:
    """Stand-ins for python:3.11-slim, postgres:16, redis:7 and prom/prometheus (cached by
    Docker's layers)."""
    _debian_base()
    _copy_host_certificates()
    for tag, folder in (
        (PYTHON_IMAGE, "python"),
        (POSTGRES_IMAGE, "postgres"),
        (REDIS_IMAGE, "redis"),
        (PROMETHEUS_IMAGE, "prometheus"),
    ):
        log(f"building {tag}")
        docker_build(tag, STAND_INS / folder)


def local_torch_wheel() -> Path | None:
    """The CPU torch wheel pip would take on this machine (its find-links), if any."""
    places = os.environ.get("PIP_FIND_LINKS", "").split()
    try:
        config = run([sys.executable, "-m", "pip", "config", "list"])
    except RuntimeError:
        config = ""
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            places += value.strip("'\"").split()
    for place in places:
        folder = Path(place.removeprefix("file://"))
        found = sorted(folder.glob(TORCH_WHEEL_GLOB)) if folder.is_dir() else []
        if found:
            return found[-1]
    return None


def _index_url() -> str:
    try:
        configured = run([sys.executable, "-m", "pip", "config", "get", "global.index-url"])
    except RuntimeError:
        configured = ""
    return configured.strip() or "https://pypi.org/simple"


def build_app_image() -> float:
    """The app image from the shipped Dockerfile, on the stand-in base; build seconds.

    The Dockerfile's own torch index (the PyTorch CPU index) may be out of reach, as it is
    on these machines: then torch comes from a wheel on this disk, dropped into
    deploy/wheels/ (hard-linked where it can be: 190 MB), and its dependencies from PyPI.
    """
    build_args = [f"PYTHON_IMAGE={PYTHON_IMAGE}"]
    wheel = local_torch_wheel()
    if wheel is not None:
        target = WHEELS / wheel.name
        if not target.exists():
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy(wheel, target)
        build_args.append(f"TORCH_INDEX_URL={_index_url()}")
        log(f"torch from {wheel}")
    log(f"building {APP_IMAGE} from the Dockerfile")
    return docker_build(APP_IMAGE, ROOT, *build_args)


@dataclass
class Images:
    app: str
    app_size_bytes: int
    app_build_seconds: float


def prepare() -> Images:
    """The engine, the stand-ins and the app image, ready for `docker compose up`."""
    ensure_engine()
    build_stand_ins()
    seconds = build_app_image()
    return Images(APP_IMAGE, image_size_bytes(APP_IMAGE), seconds)


if __name__ == "__main__":
    # `python -m tests.deploy.engine`: only prepare, e.g. to try the stack by hand.
    print(json.dumps(prepare().__dict__, indent=2))
