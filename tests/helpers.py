"""What several test modules share: the lesson's example, the envelope check, polling, model
versions, score commands, metrics scrapes, and real servers and browsers started on loopback (bounded
waits, always cleaned up). Fixtures live in the conftest.py files; this module holds plain code only."""

from __future__ import annotations

import ast
import base64
import importlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from tagifai_api.ml import artifacts
from tagifai_api.store.database import Store
from tagifai_api.store.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# --- the API's answers --------------------------------------------------------------------------

#: The lesson's example: two descriptions, each under the tag the model must give it.
LESSON_TAGS = {
    "natural-language-processing": "Transfer learning with transformers for text classification.",
    "computer-vision": "Generative adversarial networks for image generation.",
}
LESSON_TEXTS = list(LESSON_TAGS.values())
#: The lesson's /predict request body, verbatim.
LESSON = {"texts": [{"text": text} for text in LESSON_TEXTS]}

#: The keys every JSON answer has (and ``data`` when it carries any).
ENVELOPE = {"message", "method", "status-code", "timestamp", "url", "request-id"}


def check_envelope(response, status, method="GET"):
    """Assert a test client's response is the envelope with this status; return its body."""
    body = response.get_json()
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert ENVELOPE <= set(body) <= ENVELOPE | {"data"}
    assert body["status-code"] == status
    assert body["method"] == method
    assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 0
    assert body["request-id"] == response.headers["X-Request-ID"]
    return body


# --- waiting ------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; the timeout only bounds a broken run, no test relies on timing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout_s}s"
        time.sleep(0.002)


# --- model versions -----------------------------------------------------------------------------


def copy_version(root: Path, version: str, name: str) -> str:
    """Another sound version with the same files under a new name (its manifest says so)."""
    shutil.copytree(root / version, root / name)
    manifest = json.loads((root / name / artifacts.MANIFEST).read_text())
    manifest["version"] = name
    (root / name / artifacts.MANIFEST).write_text(json.dumps(manifest))
    return name


def renamed_classes(result, names: dict[str, str]):
    """A trained result (:class:`~tagifai_api.ml.train.TrainResult`) whose classes are renamed (``{old: new}``)
    everywhere a version keeps them: a model with classes of its own, as one trained on other tags would
    have, without training one."""
    import dataclasses

    def rename(classes):
        return [names.get(c, c) for c in classes]

    profile = None
    if result.profile is not None:
        profile = {**result.profile, "classes": {**result.profile["classes"],
                                                 "labels": rename(result.profile["classes"]["labels"])}}
    performance = {**result.performance, "class": {names.get(c, c): v for c, v in result.performance["class"].items()}}
    compiled = dataclasses.replace(result.compiled, classes=tuple(rename(result.compiled.classes)), _word_ids={})
    return dataclasses.replace(result, compiled=compiled, labels=rename(result.labels), profile=profile,
                               performance=performance)


# --- ``python -m tagifai_api score`` ------------------------------------------------------------


def command(artifacts_dir: Path, *args) -> list[str]:
    """The argv of a ``score`` run against the test model."""
    return [sys.executable, "-m", "tagifai_api", "--artifacts", str(artifacts_dir), "score", *map(str, args)]


def repeated(dataset_csv: bytes, times: int) -> bytes:
    """The dataset's records ``times`` over, under one header."""
    header, body = dataset_csv.split(b"\n", 1)
    if not body.endswith(b"\n"):
        body += b"\n"
    return header + b"\n" + body * times


# --- deployment files ---------------------------------------------------------------------------


def gunicorn_default(name: str) -> int:
    """The default of a Gunicorn setting in gunicorn.conf.py, read without executing the file.

    Executing it would export PROMETHEUS_MULTIPROC_DIR into the test process.
    """
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "_env_int":
                return ast.literal_eval(value.args[1])
            return ast.literal_eval(value)
    raise KeyError(name)


# --- /metrics of a running server ---------------------------------------------------------------

PREDICT_COUNT = ("tagifai_http_request_duration_seconds_count",
                 {"endpoint": "predict.predict", "method": "POST", "status": "200"})


def scrape(url: str) -> list:
    """Every sample of one /metrics scrape."""
    r = requests.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def value(samples: list, name: str, labels: dict | None = None) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    labels = labels or {}
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# --- real servers on loopback -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str, *candidates: str) -> str:
    """The path of a system binary; skip locally, fail in CI (CI=true) when it is missing."""
    for candidate in (name, *candidates):
        path = shutil.which(candidate)
        if path:
            return path
    _missing(f"{name} is not installed (CI installs it through .ci/run)")


def require_module(name: str, requirements: str) -> None:
    """Import a Python package that only ``requirements`` (which `make test` installs) pins; skip
    locally, fail in CI (CI=true) when it is missing."""
    try:
        importlib.import_module(name)
    except ImportError:
        _missing(f"{name} is not installed (pip install -r {requirements})")


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def wait_http(url: str, timeout_s: float = 30.0, status: int = 200, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers ``status``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == status:
                return
            last = r.status_code
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s}s (last: {last})")


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Server:
    """A running server: ``url`` is its base URL (no trailing slash)."""

    url: str
    port: int
    proc: subprocess.Popen


@contextmanager
def gunicorn(
    artifacts_dir: Path | None = None, workers: int = 2, env: dict | None = None, log_path: Path | None = None,
    ready_status: int = 200,
) -> Iterator[Server]:
    """Run ``gunicorn -c gunicorn.conf.py wsgi:app`` from the repository root on 127.0.0.1; up once
    ``/health/ready`` answers ``ready_status``."""
    port = free_port()
    environ = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": "",
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR")
    if artifacts_dir is not None:
        environ["TAGIFAI_ARTIFACTS_DIR"] = str(artifacts_dir)
        environ["TAGIFAI_DATABASE_URL"] = state_url(artifacts_dir)
        environ["TAGIFAI_API_KEYS_FILE"] = str(Path(artifacts_dir) / "no-old-keys-file.json")
    environ.update(env or {})
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health/ready", status=ready_status, proc=proc)
        # every worker loads its model on boot; give the others a moment to finish too
        wait_http(f"{base}/health/ready", status=ready_status, proc=proc)
        yield Server(url=base, port=port, proc=proc)
    finally:
        stop(proc)
        if log_path:
            out.close()


def one_session_per_worker(url: str, workers: int = 2, timeout_s: float = 30.0) -> list[requests.Session]:
    """Kept-alive connections, one to each worker, so a probe sent over each reaches every worker.
    A new connection goes to a less busy worker, or on a tie to whichever wakes first: connections
    are opened until each worker has one (the second may still be booting)."""
    sessions: dict[int, requests.Session] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session = requests.Session()
        pid = session.get(f"{url}/health/ready", timeout=10).json()["data"]["pid"]
        if sessions.setdefault(pid, session) is not session:
            session.close()
        elif len(sessions) == workers:
            return list(sessions.values())
        time.sleep(0.1)
    pytest.fail(f"for {timeout_s}s new connections reached only the workers {sorted(sessions)}")


# --- nginx with the shipped sites (deploy/nginx) ---------------------------------------------------

NGINX_DIR = ROOT / "deploy" / "nginx"


def nginx_text(site: str = "tagifai.conf") -> str:
    """A site of deploy/nginx as nginx reads it: its ``include snippets/...;`` lines replaced by the
    snippets themselves (for checks of the whole text)."""
    def expand(text: str) -> str:  # indented as the include line is, as if written in its place
        return re.sub(r"^([ \t]*)include (snippets/[\w.-]+);$",
                      lambda m: textwrap.indent(expand((NGINX_DIR / m[2]).read_text()), m[1]), text, flags=re.M)

    return expand((NGINX_DIR / site).read_text())


def _rewrite(text: str, pattern: str, replacement: str, what: str, count: int = 1) -> str:
    text, n = re.subn(pattern, replacement, text, flags=re.M)
    assert n == count, f"deploy/nginx has {n} {what} lines, not {count}"
    return text


@dataclass
class Nginx:
    """A running nginx: ``url`` its plain-HTTP base URL, ``tls_url`` its HTTPS one (TLS site only);
    its access log is ``directory / "access.log"``."""

    url: str
    tls_url: str | None
    directory: Path


def render_nginx(tmp: Path, upstream: str | list[str], port: int, tls_port: int | None = None,
                 certificate: Path | None = None, key: Path | None = None, directives: dict[str, str] | None = None,
                 rate_limit: bool = True) -> Path:
    """Copy a shipped site (``tagifai-tls.conf`` when ``tls_port`` is given, else ``tagifai.conf``)
    and its snippets into ``tmp``, with this run's values, and a minimal nginx.conf around it.

    Only the values the files mark as deployment-specific change: the listen addresses, the upstream
    (one address, or a list: one ``server`` line each, with the shipped line's parameters), the access
    log's path (``tmp / "access.log"``), the certificate paths; ``directives`` a test sets whole
    (``{"client_max_body_size": "64k"}``); ``rate_limit=False`` drops the limit (one client address
    sending a load). nginx resolves the includes itself, as it does once installed.
    """
    upstreams = [upstream] if isinstance(upstream, str) else upstream
    (tmp / "snippets").mkdir(parents=True, exist_ok=True)
    log = rf"\g<1>access_log {tmp / 'access.log'} "
    for snippet in (NGINX_DIR / "snippets").glob("*.conf"):
        text = snippet.read_text()
        if snippet.name == "tagifai-http.conf":
            line = re.search(r"^(\s+)server tagifai:8000\b(.*)$", text, flags=re.M)
            assert line, "deploy/nginx lost its upstream line"
            text = text.replace(line[0], "\n".join(f"{line[1]}server {address}{line[2]}" for address in upstreams))
        if snippet.name == "tagifai-proxy.conf":
            text = _rewrite(text, r"^(\s*)access_log /var/log/nginx/access.log ", log, "access_log")
            if not rate_limit:
                text = _rewrite(text, r"^\s*limit_req zone=.*\n", "", "limit_req")
        (tmp / "snippets" / snippet.name).write_text(text)
    site = NGINX_DIR / ("tagifai-tls.conf" if tls_port else "tagifai.conf")
    text = _rewrite(site.read_text(), r"^(\s+)listen 80;", rf"\g<1>listen 127.0.0.1:{port};", "listen 80")
    if tls_port:
        text = _rewrite(text, r"^(\s+)listen 443 ssl;", rf"\g<1>listen 127.0.0.1:{tls_port} ssl;", "listen 443")
        text = _rewrite(text, r"^(\s+)ssl_certificate \S+;", rf"\g<1>ssl_certificate {certificate};", "certificate")
        text = _rewrite(text, r"^(\s+)ssl_certificate_key \S+;", rf"\g<1>ssl_certificate_key {key};", "key")
        text = _rewrite(text, r"^(\s*)access_log /var/log/nginx/access.log ", log, "access_log")  # the redirect's
    (tmp / site.name).write_text(text)
    for name, value in (directives or {}).items():
        found = [p for p in [tmp / site.name, *(tmp / "snippets").glob("*.conf")]
                 if re.search(rf"^\s*{name}\s", p.read_text(), flags=re.M)]
        assert len(found) == 1, f"{name} is not set in exactly one file"
        found[0].write_text(_rewrite(found[0].read_text(), rf"^(\s*){name}\s+[^;]+;", rf"\g<1>{name} {value};", name))
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp / "nginx.conf").write_text(
        f"{user}worker_processes 1;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"{temp_paths}\n"
        f"    include {tmp / site.name};\n"
        "}\n"
    )
    return tmp / "nginx.conf"


@contextmanager
def nginx(tmp: Path, upstream: str | list[str], tls: tuple[Path, Path] | None = None,
          directives: dict[str, str] | None = None, rate_limit: bool = True) -> Iterator[Nginx]:
    """Run nginx with a shipped site in the foreground on free loopback ports, in front of
    ``upstream`` (``host:port``, or a list of them): ``tagifai.conf``, or ``tagifai-tls.conf`` with
    ``tls`` (certificate, key). See :func:`render_nginx` for the rest."""
    binary = require_binary("nginx")
    tmp.mkdir(parents=True, exist_ok=True)
    port, tls_port = free_port(), (free_port() if tls else None)
    conf = render_nginx(tmp, upstream, port, tls_port, *(tls or (None, None)), directives=directives,
                        rate_limit=rate_limit)
    cmd = [binary, "-e", "stderr", "-c", str(conf), "-p", str(tmp),
           "-g", f"daemon off; pid {tmp / 'nginx.pid'}; error_log stderr;"]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stderr
    log = open(tmp / "nginx.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    running = Nginx(f"http://127.0.0.1:{port}", f"https://127.0.0.1:{tls_port}" if tls else None, tmp)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(tmp / 'nginx.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", tls_port or port), timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield running
    finally:
        stop(proc)
        log.close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and ``127.0.0.1`` and its key, made with ``openssl req -x509``
    (the certificate is its own CA: ``curl --cacert`` it)."""
    openssl = require_binary("openssl")
    certificate, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    return certificate, key


# --- headless Chromium, driven over the Chrome DevTools protocol -------------------------------
# websocket-client speaks the protocol, so no browser download or driver package is needed:
# Debian's chromium is the browser.


class DevTools:
    """The few Chrome DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws_url: str):
        # no Origin header: Chromium refuses devtools websockets from origins it was not told to allow
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []  # every event received while waiting for answers, in order

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout_s: float = 20.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, after scrolling it into view."""
        box = self.wait_for(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el || el.disabled) return null;
                el.scrollIntoView({{block: "center"}});
                const r = el.getBoundingClientRect();
                return r.width && r.height ? {{x: r.x + r.width / 2, y: r.y + r.height / 2}} : null;
            }})()""",
            f"a clickable {selector}",
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"], button="left", clickCount=1)

    def press(self, key: str, code: int, text: str = "", modifiers: int = 0) -> None:
        """A real key press on whatever has the focus (``code``: the Windows virtual key code)."""
        self.call("Input.dispatchKeyEvent", type="keyDown", key=key, code=key, windowsVirtualKeyCode=code,
                  text=text, modifiers=modifiers)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, code=key, windowsVirtualKeyCode=code,
                  modifiers=modifiers)

    def screenshot(self, path: Path) -> None:
        """The whole page as a PNG at ``path``."""
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(profile: Path) -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile, reachable only on loopback; yields its page's DevTools."""
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    profile.mkdir(parents=True, exist_ok=True)
    cmd = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1280,1400",
        # any host but loopback fails to resolve, so nothing leaves the machine
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        "about:blank",
    ]
    log = open(profile.parent / "chromium.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    devtools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {(profile.parent / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


# --- the state store ---------------------------------------------------------------------------
def state_url(root: Path) -> str:
    """The test store of an artifacts folder: a SQLite file inside it, so copying the folder copies its state."""
    return f"sqlite:///{Path(root) / 'state.db'}"


def copy_tree_with_state(source: Path, dest: Path) -> Path:
    """A copy of a test artifacts folder, its store (``state.db``) included."""
    shutil.copytree(source, dest)
    return dest


def add_key(app, name: str, role: str) -> str:
    """Create a key in the app's store and have the app hold it now (not at its next poll); the key."""
    from tagifai_api.auth.keys import KeyStore

    key = KeyStore(app.extensions["tagifai"].service.registry.store).create(name, role)
    app.extensions["tagifai_auth"].ring.refresh()
    return key


def open_registry(root: Path) -> Registry:
    """The registry of a test artifacts folder, its store created if need be."""
    store = Store(state_url(root))
    store.upgrade()
    return Registry(store, root)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """Debian keeps the server's programs under /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """A scratch PostgreSQL cluster of its own on 127.0.0.1 (``initdb`` and ``pg_ctl`` in a temporary
    directory), stopped and removed by :func:`postgres`; ``stop()`` and ``start()`` for outages."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.directory = directory
        self.bin = bin_dir
        self.port = free_port()
        self.data = directory / "data"
        self.url = f"postgresql+psycopg://tagifai@127.0.0.1:{self.port}/tagifai"
        # initdb refuses to run as root: as root, the cluster belongs to the postgres user
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *args], timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")

    def create(self) -> None:
        if self._as:
            shutil.chown(self.directory, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "tagifai", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "tagifai", "tagifai")

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-t", "30",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.directory} -F", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster; skipped locally, a failure in CI, without one. Its directory is not
    under pytest's (private to root, so the postgres user could not enter it)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        require_binary("initdb")  # skips or fails with the usual message
    directory = Path(tempfile.mkdtemp(prefix="tagifai-postgres-"))
    server = Postgres(directory, bin_dir)
    try:
        server.create()
        yield server
    finally:
        if server.running():
            try:
                server.stop("immediate")
            except (subprocess.SubprocessError, OSError):
                pass
        shutil.rmtree(directory, ignore_errors=True)


# --- state store outages ------------------------------------------------------------------------


@contextmanager
def store_outage(url: str, server: Postgres | None = None, stores: tuple[Store, ...] = ()) -> Iterator[None]:
    """The store at ``url`` unreachable for the block, for real: its PostgreSQL ``server`` stopped, or
    its SQLite file moved away with a directory in its place (opening one fails as a lost disk
    would). ``stores`` first drop their connections: an open SQLite connection would go on reading
    the moved file. Everything is back, as it was, after the block."""
    for store in stores:
        store.close()
    if server is not None:
        server.stop()
        try:
            yield
        finally:
            server.start()
        return
    import sqlalchemy

    database = Path(sqlalchemy.make_url(url).database)
    moved = [(path, path.with_name(path.name + ".away")) for path in
             (database, *(database.with_name(database.name + suffix) for suffix in ("-wal", "-shm")))
             if path.exists()]
    for path, away in moved:
        path.rename(away)
    database.mkdir()
    try:
        yield
    finally:
        for store in stores:
            store.close()
        database.rmdir()
        for path, away in moved:
            away.rename(path)


# --- keys for a real server ---------------------------------------------------------------------


def private_store(artifacts_dir: Path, directory: Path, name: str = "state.db") -> str:
    """A copy of an artifacts folder's store in ``directory``; its URL. Keys made there stay out of the
    folder's own store (the session's, which every other test copies). The copy starts with an empty
    prediction log and no feedback: servers that other tests ran on the session's folder logged there."""
    import sqlite3

    target = Path(directory) / name
    shutil.copy(Path(artifacts_dir) / "state.db", target)
    with closing(sqlite3.connect(target)) as db, db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in {"prediction_log", "feedback"} & tables:
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - two fixed names
    return f"sqlite:///{target}"


def keys_command(database_url: str, *args: str) -> str:
    """``python -m tagifai_api keys ARGS`` on that store, as an operator runs it; its standard output
    (the new key, for ``create``)."""
    env = {**os.environ, "TAGIFAI_DATABASE_URL": database_url,
           "TAGIFAI_API_KEYS_FILE": str(ROOT / "tests" / "no-such-directory" / "api_keys.json")}
    out = subprocess.run([sys.executable, "-m", "tagifai_api", "keys", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- the test store, for the command line and the registry's tests --------------------------------


def cli_env(root: Path) -> dict:
    """What a ``python -m tagifai_api`` command needs, over ``os.environ``, to use the test store of the
    artifacts folder ``root`` (and to find no old keys file to import)."""
    return {"TAGIFAI_DATABASE_URL": state_url(root), "TAGIFAI_API_KEYS_FILE": str(Path(root) / "no-old-keys-file.json")}


def default_of(root: Path) -> str:
    """The default version the test store of ``root`` records (as a worker reads it)."""
    registry = open_registry(root)
    try:
        return registry.default_version()
    finally:
        registry.store.close()


def load_default(root: Path, **options) -> artifacts.ModelVersion:
    """The default version of the artifacts folder ``root``, loaded (what ``artifacts.load(root)`` was)."""
    return artifacts.load(root, default_of(root), **options)


def store_errors(client) -> dict:
    """``tagifai_store_errors_total`` by operation, from a test client's /metrics."""
    families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
    return {s.labels["operation"]: s.value for family in families for s in family.samples
            if s.name == "tagifai_store_errors_total"}


# --- an identity provider, for the token tests -------------------------------------------------


class IdentityProvider:
    """A stand-in OpenID Connect provider on 127.0.0.1 for tests: a discovery document and a key set
    (JWKS) served by a stdlib HTTP server in a thread, signing keys made here, tokens signed with them.

    ``rotate()`` publishes a new key (old ones stay unless ``drop_old``); ``down = True`` makes every
    request fail with 503; ``hits`` counts requests per path.
    """

    def __init__(self, audience: str = "tagifai-api") -> None:
        import http.server
        import threading

        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self._rsa, self._ec = rsa, ec
        self.audience = audience
        self.down = False
        self.delay_s = 0.0
        self.hits: dict[str, int] = {}
        self.keys: dict[str, object] = {}  # kid -> private key
        self.published: list[str] = []
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                provider.hits[self.path] = provider.hits.get(self.path, 0) + 1
                if provider.delay_s:
                    time.sleep(provider.delay_s)
                if provider.down:
                    self.send_error(503)
                    return
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks"}
                elif self.path == "/jwks":
                    body = provider.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up waiting (a test of a slow provider)
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.rotate("rsa-1")

    def rotate(self, kid: str, kind: str = "rsa", drop_old: bool = False) -> str:
        key = (self._rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
               else self._ec.generate_private_key(self._ec.SECP256R1()))
        self.keys[kid] = key
        self.published = ([] if drop_old else self.published) + [kid]
        return kid

    def jwks(self) -> dict:
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        out = []
        for kid in self.published:
            key = self.keys[kid].public_key()
            algorithm = RSAAlgorithm if isinstance(key, self._rsa.RSAPublicKey) else ECAlgorithm
            jwk = algorithm.to_jwk(key, as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig",
                        "alg": "RS256" if algorithm is RSAAlgorithm else "ES256"})
        return {"keys": out}

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": "alice", "iat": now, "nbf": now,
                  "exp": now + 300, "roles": ["tagifai:predict"]}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, kid: str | None = None, alg: str | None = None, headers: dict | None = None, **claims) -> str:
        import jwt

        kid = kid or self.published[-1]
        key = self.keys[kid]
        alg = alg or ("RS256" if isinstance(key, self._rsa.RSAPrivateKey) else "ES256")
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers={"kid": kid, **(headers or {})})

    def public_pem(self, kid: str) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.keys[kid].public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def settings(self, **extra) -> dict:
        """``create_app`` overrides that make an app accept this provider's tokens."""
        return {"OIDC_ISSUER": self.issuer, "OIDC_AUDIENCE": self.audience, **extra}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- traffic for the drift statistics ------------------------------------------------------------

#: texts of other domains and languages, written for the drift tests (tests/monitoring/traffic.json)
DRIFT_DOMAINS = ("cooking", "sports", "german", "french")


def held_out(args: dict):
    """The test split (``text``, ``title``, ``tag``) a version with these args never trained on: the
    in-distribution traffic of the drift tests, and the source of the shifts built from projects."""
    from tagifai_api import settings
    from tagifai_api.ml import data
    from tagifai_api.ml import train as training

    df = data.prepare(data.load_dataset(settings.DATA_FILE), args["accepted_tags"], args["min_tag_freq"],
                      training.stopwords_for(args))
    return data.split(df, args["val_size"], args["test_size"], args["seed"])[2]


def drift_traffic(kind: str, n: int, seed: int, projects) -> list[str]:
    """``n`` texts of one kind, drawn with replacement (seeded), ``projects`` being :func:`held_out`'s:

    - ``in_distribution``: held-out projects as they are;
    - ``one_class:<tag>``: held-out projects of that tag only;
    - a :data:`DRIFT_DOMAINS` name: a title and a description of that domain or language;
    - ``short``: held-out projects' titles alone (a client that sends no description);
    - ``long``: five held-out projects run together (within the 10,000-character limit);
    - ``mixed:<domain>:<share>``: that share of the domain's texts among held-out projects.
    """
    import random

    rng = random.Random(f"{kind}/{seed}")
    texts, titles = list(projects["text"]), list(projects["title"])
    if kind == "in_distribution":
        return [rng.choice(texts) for _ in range(n)]
    if kind.startswith("one_class:"):
        of_tag = list(projects[projects["tag"] == kind.split(":", 1)[1]]["text"])
        return [rng.choice(of_tag) for _ in range(n)]
    if kind in DRIFT_DOMAINS:
        domain = json.loads((ROOT / "tests" / "monitoring" / "traffic.json").read_text(encoding="utf-8"))[kind]
        return [f"{rng.choice(domain['titles'])}. {rng.choice(domain['descriptions'])}" for _ in range(n)]
    if kind == "short":
        return [rng.choice(titles) for _ in range(n)]
    if kind == "long":
        return [" ".join(rng.choice(texts) for _ in range(5))[:10_000] for _ in range(n)]
    if kind.startswith("mixed:"):
        _, domain, share = kind.split(":")
        shifted = iter(drift_traffic(domain, n, seed, projects))
        return [next(shifted) if rng.random() < float(share) else rng.choice(texts) for _ in range(n)]
    raise ValueError(f"unknown kind of traffic {kind!r}")
