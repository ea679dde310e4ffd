"""Gunicorn settings for TagIfAI (read automatically from the working directory).

Precedence: this file < GUNICORN_CMD_ARGS < command-line flags. Only Gunicorn setting names are
public globals here; helpers start with ``_``. The web app is never imported by the master.
"""

import ctypes
import gc
import os
import sys
import tempfile

from gunicorn.glogging import Logger as _GunicornLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gunicorn.util as _gunicorn_util  # noqa: E402

from tagifai_api.server.errors import write_error as _json_write_error  # noqa: E402 - standard library only
from tagifai_api.telemetry.logs import gunicorn_logconfig  # noqa: E402 - standard library only
from tagifai_api.telemetry.multiprocess import archive_dead_worker  # noqa: E402 - standard library only

# Requests Gunicorn cannot parse (a bad Content-Length, oversized headers) are answered by
# Gunicorn itself, in HTML; answer them in the service's JSON envelope instead.
_gunicorn_util.write_error = _json_write_error


def _env_int(name, default, minimum=None):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        sys.exit(f"error: {name}: expected a whole number such as {default}, got {value!r}")
    if minimum is not None and number < minimum:
        sys.exit(f"error: {name}: expected a whole number of at least {minimum}, got {value!r}")
    return number


def _env_str(name, default):
    return os.environ.get(name) or default


# BLAS/OpenMP pools: one thread per worker, or W workers x N threads oversubscribe the cores
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# socket
wsgi_app = "wsgi:app"
bind = _env_str("GUNICORN_BIND", f"0.0.0.0:{_env_int('PORT', 8000)}")
backlog = _env_int("GUNICORN_BACKLOG", 2048)

# workers: inference is CPU-bound, so one process per core; threads let a worker batch concurrent requests
workers = _env_int("WEB_CONCURRENCY", os.cpu_count() or 1)
# Gunicorn's gthread with one write per response and kept-alive connections served in place
# (tagifai_api/server/worker.py; pinned to the Gunicorn version); GUNICORN_WORKER_CLASS=gthread for the original
worker_class = _env_str("GUNICORN_WORKER_CLASS", "tagifai_api.server.worker.ThreadWorker")
if worker_class == "tagifai_api.worker.ThreadWorker":  # its name before the package had a server/ folder
    worker_class = "tagifai_api.server.worker.ThreadWorker"
if worker_class == "tagifai_api.server.worker.ThreadWorker":
    try:
        import tagifai_api.server.worker  # noqa: E402, F401 - refuses a Gunicorn version it was not written for
    except RuntimeError as _exc:
        sys.exit(f"error: {_exc}")
# 4 threads: on this model a request is mostly Python holding the GIL, so more threads than that only
# contend for it (16, 8 and 4 measured side by side: 4 served most); raise it for a slower model,
# where more concurrent requests make bigger micro-batches
threads = _env_int("GUNICORN_THREADS", 4)
worker_connections = _env_int("GUNICORN_WORKER_CONNECTIONS", 1000)
# Each worker loads its own models after forking, and follows artifacts/DEFAULT by itself (a watcher
# thread per worker, which a preloaded master would not have); a HUP still restarts workers gracefully.
preload_app = False
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 100_000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 10_000)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# timeouts: a worker must outlive the longest queued prediction (TAGIFAI_PREDICT_TIMEOUT_MS, 10 s)
timeout = _env_int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _env_int("GUNICORN_KEEPALIVE", 75)

# slow clients: the worker reads each request whole in its event loop before a thread sees it. The
# request line and headers must arrive within the header timeout (from the request's first byte, or
# the accept), the body must not stall for longer than the body timeout (nginx's client_header_timeout
# and client_body_timeout); a worker holds at most so many connections, and megabytes, of requests
# still arriving, closing the oldest beyond. Past a deadline: 408, counted in tagifai_slow_clients_total.
_slow_clients = {
    "header_timeout": _env_int("GUNICORN_HEADER_TIMEOUT", 10, minimum=1),
    "body_timeout": _env_int("GUNICORN_BODY_TIMEOUT", 30, minimum=1),
    "max_incomplete": _env_int("GUNICORN_MAX_INCOMPLETE", 128, minimum=1),
    "max_incomplete_bytes": _env_int("GUNICORN_MAX_INCOMPLETE_MB", 64, minimum=1) << 20,
}
if worker_class == "tagifai_api.server.worker.ThreadWorker":
    tagifai_api.server.worker.ThreadWorker.configure(**_slow_clients)

# logging: the app writes one JSON access line per request (with request id, latency, texts, model
# version); Gunicorn's own log is JSON too. GUNICORN_ACCESSLOG=- adds Gunicorn's access line as well.
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None


class _Logger(_GunicornLogger):
    """Gunicorn's logger, with its access line only when ``accesslog`` asks for it.

    Gunicorn turns its access log on whenever ``logconfig_dict`` is set, which would double every
    access line (and build one more per request) next to the app's own.
    """

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = _Logger
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %({x-request-id}o)s %(M)sms'
errorlog = "-"
loglevel = _env_str("TAGIFAI_LOG_LEVEL", "info").lower()
logconfig_dict = gunicorn_logconfig()
proc_name = "tagifai-api"

# Prometheus multiprocess mode: every worker writes samples to this directory, /metrics sums them
# (one directory per port, so two services on one host do not mix their samples)
_port = bind.rsplit(":", 1)[-1]
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"tagifai-metrics-{_port}"))
# the app refuses a missing directory, and `--check-config` imports the app without on_starting
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server):
    """Refuse what the service cannot start with (a bad ``TAGIFAI_*`` setting, a missing artifacts
    directory, a state store it cannot use, a port in use) in one line on stderr, before any worker
    starts; bring the store's schema up to date once, so workers only check it; then start without
    the samples of a previous run, which would be counted again.

    Only the sample files go: the directory may be one an operator chose, with other files in it.
    """
    from tagifai_api.server import startup  # standard library only

    startup.check_or_exit(server.cfg.address)
    os.environ["TAGIFAI_STORE_UPGRADE"] = "false"  # the workers fork from here: they check, never migrate
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db") or name == ".lock":
            os.remove(os.path.join(path, name))


def _tune_malloc():
    """Keep the model's large per-batch arrays on the heap (glibc only; explicit MALLOC_* env wins).

    glibc serves blocks over its mmap threshold with a fresh mmap and trims the heap top after
    frees, so each 100-text batch paid for page faults on new memory: about 2 ms of system time
    per request, measured. Fixed 4 MiB mmap and 8 MiB trim thresholds reuse that memory; two
    arenas at most keep it from being held once per thread (the GIL serialises allocations
    anyway): without that cap the service's peak RSS grew from about 160 to 250 MB.
    """
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 8 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


def post_fork(server, worker):
    _tune_malloc()
    server.log.info("worker %s started", worker.pid)


def post_worker_init(worker):
    """Move everything the app loaded at start (libraries, the model, the routes) out of the garbage
    collector's sight: it lives as long as the worker, and every full collection walked all of it again,
    about 20 µs a request on average, measured in process. Garbage from the start is collected first,
    so none of it is kept for good."""
    gc.collect()
    gc.freeze()


def worker_exit(server, worker):
    """Write out the worker's buffered access lines before it goes."""
    from tagifai_api.web import access

    access.flush()


def child_exit(server, worker):
    """Fold the dead worker's samples into one archive file, so recycling neither loses counts nor piles up files."""
    archive_dead_worker(os.environ["PROMETHEUS_MULTIPROC_DIR"], worker.pid)
