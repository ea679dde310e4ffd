"""The Dockerfile and compose file, checked against the repository (no Docker engine runs the build here)."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tagifai_api import settings
from tests.helpers import ROOT, gunicorn_default, nginx_text

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"

#: a compose interpolation: ${NAME}, ${NAME:-default}, ${NAME:?error} and their forms without the colon
interpolation = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def exec_form(arguments: str) -> list[str] | None:
    """The JSON array of an exec-form CMD/RUN/HEALTHCHECK, or None for shell form."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def is_dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether a path (or a folder above it) is left out of the build context; ``!`` re-includes."""
    parts = Path(relative).parts
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern[3:] if pattern.startswith("**/") else pattern
        for i in range(1, len(parts) + 1):
            candidates = ["/".join(parts[:i]), parts[i - 1]]
            if any(fnmatch.fnmatch(c, pattern) for c in candidates):
                ignored = not negate
                break
    return ignored


@pytest.fixture(scope="module")
def instructions():
    return dockerfile_instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def stages(instructions):
    """Instructions grouped by stage, keyed by stage name."""
    grouped: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions:
        if keyword == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else f"stage{len(grouped)}"
            grouped[current] = []
        elif current is not None:
            grouped[current].append((keyword, args))
    return grouped


def test_base_image_is_pinned_python_311_slim(instructions):
    arg = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    froms = [a.split()[0] for k, a in instructions if k == "FROM"]
    bases = {arg.get(f.strip("${}"), f) if f.startswith("$") else f for f in froms}
    stage_names = set(stages(instructions))
    external = bases - stage_names
    assert len(froms) >= 2, "multi-stage: dependencies are built apart from the runtime image"
    assert external, froms
    for base in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


def test_every_copy_source_is_in_the_build_context(instructions):
    patterns = dockerignore_patterns()
    for keyword, args in instructions:
        if keyword != "COPY" or "--from=" in args:
            continue
        sources = [s for s in args.split() if not s.startswith("--")][:-1]
        assert sources, args
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not is_dockerignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"


def test_copy_from_names_an_earlier_stage(instructions):
    seen: list[str] = []
    for keyword, args in instructions:
        if keyword == "FROM" and " AS " in args.upper():
            seen.append(args.split()[-1])
        if keyword == "COPY" and "--from=" in args:
            stage = re.search(r"--from=(\S+)", args)[1]
            assert stage in seen, f"COPY --from={stage} before that stage exists"


def test_dependencies_are_the_pinned_requirements(instructions):
    runs = " ".join(a for k, a in instructions if k == "RUN")
    assert re.search(r"pip install .*-r \S*requirements\.txt", runs)
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", line), f"unpinned requirement: {line}"


def test_model_is_trained_and_verified_at_build_time(instructions):
    runs = [a for k, a in instructions if k == "RUN"]
    assert sum("-m tagifai_api ensure-model" in r for r in runs) >= 1


def test_runtime_runs_as_a_non_root_user(instructions):
    runtime = list(stages(instructions).values())[-1]
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}


def test_runtime_image_serves_alone_with_its_own_store(instructions):
    """The image run alone (no TAGIFAI_DATABASE_URL) keeps its state in the default SQLite file: the
    runtime user owns its directory, and the build records the trained version as its default, as
    that user, then loads it from the read-only copy."""
    runtime = list(stages(instructions).values())[-1]
    (workdir,) = [a for k, a in runtime if k == "WORKDIR"]
    store = Path(sa.make_url(str(settings.DEFAULTS["DATABASE_URL"])).database)
    store_dir = Path(workdir) / store.parent.relative_to(settings.ROOT)
    user = [a for k, a in runtime if k == "USER"][-1]
    position = runtime.index(("USER", user))
    before = " ".join(a for k, a in runtime[:position] if k == "RUN")
    after = " ".join(a for k, a in runtime[position:] if k == "RUN")
    assert re.search(rf"mkdir -p [^&]*{store_dir}\b", before)
    assert re.search(rf"chown {user}:{user} [^&]*{store_dir}\b", before)
    assert "-m tagifai_api seed /app/artifacts" in after
    assert "-m tagifai_api predict" in after
    # the versions stay root's: nothing the service runs may change them
    assert not re.search(r"chown \S+ [^&]*/app/artifacts\b", before)


def test_thread_pools_are_one_per_worker(instructions):
    runtime = list(stages(instructions).values())[-1]
    env = " ".join(a for k, a in runtime if k == "ENV")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert re.search(rf"\b{var}=1\b", env), var


def test_cmd_is_gunicorn_with_the_repository_config(instructions):
    cmds = [a for k, a in instructions if k == "CMD"]
    assert exec_form(cmds[-1]) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert not [a for k, a in instructions if k == "ENTRYPOINT"]


def test_healthcheck_probes_a_real_readiness_route_with_python(instructions, app):
    checks = [a for k, a in instructions if k == "HEALTHCHECK"]
    assert len(checks) == 1
    command = exec_form(checks[0].split("CMD", 1)[1].strip())
    assert command and command[0] == "python", "slim images have no curl"
    path = re.search(r"https?://[^/'\"]+(/[\w/]*)", " ".join(command))[1]
    assert path == "/health/ready"
    adapter = app.url_map.bind("localhost")
    assert adapter.match(path, method="GET")[0] == "health.ready"


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for path in (".venv", ".venv/bin/python", "artifacts", "artifacts/DEFAULT", ".git", "reports/locust",
                 "node_modules", "tagifai_api/__pycache__/x.pyc", "config/api_keys.json", "config/.api_keys.json.lock",
                 "var/tagifai.db", ".env"):
        assert is_dockerignored(path, patterns), path
    for path in ("tagifai_api/__init__.py", "requirements.txt", "gunicorn.conf.py", "wsgi.py", "data/dataset.csv",
                 "config/args.json"):
        assert not is_dockerignored(path, patterns), path


def test_compose_runs_the_service_behind_nginx_with_monitoring(compose):
    services = compose["services"]
    assert {"tagifai", "nginx", "prometheus", "grafana"} <= services.keys()
    assert services["tagifai"]["build"]["context"] == "."
    assert (ROOT / services["tagifai"]["build"].get("dockerfile", "Dockerfile")).is_file()
    assert services["nginx"]["depends_on"]["tagifai"]["condition"] == "service_healthy"


def test_compose_settings_are_known(compose):
    for service in ("tagifai", "migrate"):
        env = compose["services"][service].get("environment", {})
        for name in env:
            if name.startswith(settings.ENV_PREFIX):
                assert name[len(settings.ENV_PREFIX):] in settings.SETTINGS, f"{service}: {name}"


def test_compose_bind_mounts_exist(compose):
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not (ROOT / source).exists():
                    missing.append(f"{name}: {source}")
    assert not missing


def test_compose_nginx_uses_the_shipped_config_and_reaches_the_api(compose):
    mounts = [v.split(":") for v in compose["services"]["nginx"]["volumes"]]
    assert ["./deploy/nginx/tagifai.conf", "/etc/nginx/conf.d/default.conf", "ro"] in mounts
    assert ["./deploy/nginx/snippets", "/etc/nginx/snippets", "ro"] in mounts  # what the site includes
    conf = nginx_text("tagifai.conf")
    upstream = re.search(r"^\s+server (\S+?):(\d+)\b", conf, flags=re.M)
    assert upstream[1] in compose["services"], "the nginx upstream is not a compose service"
    assert upstream[2] in [str(p) for p in compose["services"][upstream[1]]["expose"]]
    # nginx resolves the service's name to every replica's address when it starts
    assert compose["services"][upstream[1]]["deploy"]["replicas"] >= 2


def test_the_tls_override_swaps_in_the_tls_site_and_its_certificates(compose):
    """docker-compose.tls.yml over docker-compose.yml: the same mount target, so the TLS site replaces
    the plain one; the certificates' directory where the site reads them; 443 and 80 published."""
    nginx = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"]["nginx"]
    site, certificates = (v.rsplit(":", 2) for v in nginx["volumes"])
    assert site == ["./deploy/nginx/tagifai-tls.conf", "/etc/nginx/conf.d/default.conf", "ro"]
    assert (ROOT / site[0]).is_file()
    assert re.fullmatch(r"\$\{TAGIFAI_TLS_DIR:\?[^}]+\}", certificates[0]) and certificates[1:] == ["/etc/nginx/tls", "ro"]
    tls = nginx_text("tagifai-tls.conf")
    for name in ("ssl_certificate", "ssl_certificate_key"):
        (path,) = re.findall(rf"^\s*{name} ([^;]+);", tls, flags=re.M)
        assert path.startswith("/etc/nginx/tls/"), name
    assert set(nginx["ports"]) == {"80:80", "443:443"}
    assert "https://127.0.0.1/health/live" in nginx["healthcheck"]["test"]
    assert any(v.startswith("./deploy/nginx/snippets:") for v in compose["services"]["nginx"]["volumes"])


def test_compose_stop_grace_outlasts_gunicorn(compose):
    grace = compose["services"]["tagifai"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > gunicorn_default("graceful_timeout")


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image")
        if image and "build" not in service:
            tag = image.rsplit(":", 1)[-1] if ":" in image else ""
            assert tag and tag != "latest", f"{name}: {image}"


def test_prometheus_scrapes_the_compose_service(compose):
    """The scrape config (deploy/prometheus) and the compose service names must agree."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    jobs = [job for job in config["scrape_configs"] if job["job_name"] != "prometheus"]
    assert jobs
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        # every replica's address, not one of them per scrape as a static name would give
        assert not job.get("static_configs"), job["job_name"]
        for sd in job["dns_sd_configs"]:
            assert sd["type"] == "A"
            for host in sd["names"]:
                assert host in compose["services"], host
                assert str(sd["port"]) in [str(p) for p in compose["services"][host].get("expose", [])], host


def test_compose_runs_postgres_with_a_healthcheck_and_a_volume(compose):
    db = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?-alpine", db["image"]), db["image"]
    (data,) = [v for v in db["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data"]
    assert data.split(":")[0] in compose["volumes"]  # a named volume, not the container's own layer
    test = db["healthcheck"]["test"]
    command = test[1:] if test[0] == "CMD" else test[1].split()
    assert command[0] == "pg_isready"
    flags = dict(zip(command[1::2], command[2::2]))
    # over TCP: while a new volume is initialised the server listens on its socket only
    assert flags.get("-h") in {"127.0.0.1", "localhost"}
    assert flags["-U"] == db["environment"]["POSTGRES_USER"] and flags["-d"] == db["environment"]["POSTGRES_DB"]
    assert "ports" not in db  # reachable by the other services only


def test_compose_runs_two_replicas_on_the_shared_store(compose):
    db, api = compose["services"]["postgres"], compose["services"]["tagifai"]
    assert api["deploy"]["replicas"] >= 2
    assert "container_name" not in api and "ports" not in api  # either would stop a second replica
    url = sa.make_url(interpolation.sub("PASSWORD", api["environment"]["TAGIFAI_DATABASE_URL"]))
    assert url.drivername == "postgresql+psycopg"  # the driver requirements.txt installs
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == db["environment"]["POSTGRES_USER"] and url.database == db["environment"]["POSTGRES_DB"]
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "TAGIFAI_API_KEYS_FILE" not in api["environment"]  # keys live in the store


def test_compose_database_password_is_never_in_clear(compose):
    """The password is asked of whoever runs compose (its environment or an uncommitted .env), with
    no default; the URL the replicas get is built from the same variable."""
    db, api = compose["services"]["postgres"], compose["services"]["tagifai"]
    required = re.compile(r"\$\{POSTGRES_PASSWORD:?\?[^}]*\}")
    assert required.fullmatch(db["environment"]["POSTGRES_PASSWORD"])
    url = sa.make_url(required.sub("PASSWORD", api["environment"]["TAGIFAI_DATABASE_URL"]))
    assert url.password == "PASSWORD"
    for match in interpolation.finditer(COMPOSE.read_text()):
        if match["name"] == "POSTGRES_PASSWORD":
            assert match["op"] in {":?", "?"}, match[0]


def test_compose_migrates_and_seeds_once_before_the_replicas(compose, instructions):
    """A one-shot service brings the schema up to date and copies the image's versions into the
    versions volume before any replica starts; the replicas only read that volume."""
    api, migrate = compose["services"]["tagifai"], compose["services"]["migrate"]
    assert migrate["image"] == api["image"] and migrate["restart"] == "no"
    command = " ".join(migrate["command"])
    assert "python -m tagifai_api store upgrade && " in command
    assert command.endswith("python -m tagifai_api seed /app/artifacts")  # where the Dockerfile puts them
    for name in ("TAGIFAI_DATABASE_URL", "TAGIFAI_ARTIFACTS_DIR"):
        assert migrate["environment"][name] == api["environment"][name], name
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert api["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    path = api["environment"]["TAGIFAI_ARTIFACTS_DIR"]
    assert f"artifacts:{path}" in migrate["volumes"]
    assert api["volumes"] == [f"artifacts:{path}:ro"]  # the versions only: no keys file, no state
    assert "artifacts" in compose["volumes"]
    # a new named volume takes the image directory's owner: the service's user, so seed can write there
    runs = " ".join(a for k, a in instructions if k == "RUN")
    assert re.search(rf"mkdir -p [^&]*{path}\b", runs) and re.search(rf"chown tagifai:tagifai [^&]*{path}\b", runs)
