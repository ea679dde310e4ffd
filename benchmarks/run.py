"""`make bench`: the fast path against scikit-learn in-process, then the service over HTTP with wrk.

Everything is measured side by side in one run on this machine, so ratios are meaningful even
when absolute numbers drift with the machine's load. Results: a table on stdout and
``reports/bench/bench-<time>.json``.

``--baseline REV`` measures this working tree against the service as it was at git revision REV
instead: REV is exported to a temporary directory and served from there (its own gunicorn.conf.py
and wsgi.py, the same virtualenv, model versions and settings), and the chosen scenarios alternate
between the two, round after round. ``--setting NAME=VALUE`` (repeatable) sets ``TAGIFAI_NAME`` for every
served tree that knows the setting: ``--setting PREDICTION_LOG=off`` compares the state store alone
with a revision from before the prediction log, which would refuse the setting.

The default version is the one the state store records, as for the service: the store is
``TAGIFAI_DATABASE_URL`` (or the service's default), read here and handed to every server started.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "benchmarks" / "predict.lua"
REPORTS = ROOT / "reports" / "bench"

sys.path.insert(0, str(ROOT))

from benchmarks import explain_cost  # noqa: E402
from tagifai_api import settings  # noqa: E402
from tagifai_api.ml import artifacts, data  # noqa: E402

HTTP_SCENARIOS = [  # name, connections, wrk threads, texts per request
    ("1 text, 1 conn", 1, 1, 1),
    ("1 text, 16 conns", 16, 2, 1),
    ("1 text, 64 conns", 64, 2, 1),
    ("100 texts, 4 conns", 4, 2, 100),
]


def dataset_texts() -> list[str]:
    df = data.load_dataset(settings.DATA_FILE)
    return [data.join_text(t, d) for t, d in zip(df["title"], df["description"])]


# --- the model the service serves ----------------------------------------------------------------

def database_url() -> str:
    """The state store that says which version is the default: ``TAGIFAI_DATABASE_URL``, else the
    service's default (the benchmarks serve with the same one)."""
    return str(settings.from_env()["DATABASE_URL"])


def default_version(root: Path) -> str:
    """The default version of the artifacts directory ``root``, as the state store records it."""
    from tagifai_api.store.database import Store
    from tagifai_api.store.registry import Registry

    store = Store(database_url())
    try:
        store.check()  # a store never set up is one clear sentence, not a missing table
        return Registry(store, root).default_version()
    finally:
        store.close()


def load_default(root: Path, **options) -> artifacts.ModelVersion:
    """The default version of ``root``, loaded and verified."""
    return artifacts.load(Path(root), default_version(Path(root)), **options)


# --- in-process -------------------------------------------------------------------------------

def _rate(fn, batches: list[list[str]], seconds: float) -> float:
    """Texts per second calling ``fn`` on rotating batches for about ``seconds``."""
    for b in batches[:3]:
        fn(b)  # warm-up
    done = 0
    i = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = batches[i % len(batches)]
        fn(batch)
        done += len(batch)
        i += 1
    return done / (time.perf_counter() - start)


def _sklearn_fn(version):
    pipeline = artifacts.load_pipeline(version)
    clean = version.compiled.clean
    return lambda batch: pipeline.predict_proba([clean(t) for t in batch])


def _fast_fn(version):
    model = version.compiled
    return lambda batch: model.predict_proba([model.clean(t) for t in batch])


def _batches(texts: list[str], size: int) -> list[list[str]]:
    rng = random.Random(size)
    return [rng.sample(texts, size) for _ in range(max(1, 2000 // size))]


def _worker(args) -> dict[int, float]:
    """Texts/s of one implementation at each batch size, in a fresh process: the fast path is
    measured without scikit-learn loaded, as in a serving worker (scikit-learn's allocations
    otherwise leave the allocator in a state that slows the fast path's large arrays)."""
    kind, root, name, sizes, seconds = args
    os.environ["OMP_NUM_THREADS"] = "1"
    version = artifacts.load(Path(root), name)
    fn = _sklearn_fn(version) if kind == "sklearn" else _fast_fn(version)
    texts = dataset_texts()
    return {size: _rate(fn, _batches(texts, size), seconds) for size in sizes}


def in_process(root: Path, seconds: float) -> dict:
    sizes = (1, 32, 100)
    name = default_version(root)
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        sk = pool.apply(_worker, (("sklearn", str(root), name, sizes, seconds),))
    with ctx.Pool(1) as pool:
        fast = pool.apply(_worker, (("fast", str(root), name, sizes, seconds),))
    out = {}
    for size in sizes:
        out[f"batch_{size}"] = {"sklearn_texts_per_s": round(sk[size]), "fast_texts_per_s": round(fast[size]),
                                "speedup": round(fast[size] / sk[size], 2)}
    with ctx.Pool(2) as pool:
        rates = pool.map(_worker, [("sklearn", str(root), name, (100,), seconds)] * 2)
    out["sklearn_batch_100_two_processes_texts_per_s"] = round(sum(r[100] for r in rates))
    return out


# --- over HTTP --------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_bodies(path: Path, texts: list[str], per_request: int) -> None:
    rng = random.Random(per_request)
    with open(path, "w", encoding="utf-8") as fh:
        if per_request == 1:
            for t in texts:
                fh.write(json.dumps({"texts": [{"text": t}]}) + "\n")
        else:
            for _ in range(200):
                fh.write(json.dumps({"texts": [{"text": t} for t in rng.sample(texts, per_request)]}) + "\n")


class RssSampler(threading.Thread):
    """Peak of the summed RSS of the Gunicorn master and its workers."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.05):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass


def _wrk(wrk: str, port: int, conns: int, threads: int, seconds: float, bodies: Path) -> dict:
    env = {**os.environ, "TAGIFAI_BENCH_BODIES": str(bodies)}
    proc = subprocess.run(
        [wrk, f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(LUA),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 60,
    )
    match = re.search(r"^JSON(\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed: {proc.stdout}\n{proc.stderr}")
    result = json.loads(match.group(1))
    result["errors"] = sum(v for k, v in result.items() if k.startswith("errors_"))
    result["req_per_s"] = result["requests"] / result["seconds"]
    return result


TARGETS = {  # name -> how to serve it; each has 2 Gunicorn workers
    "tagifai, batching on": {"app": "wsgi:app", "conf": "gunicorn.conf.py", "env": {"TAGIFAI_BATCHING": "true"}},
    "tagifai, batching off": {"app": "wsgi:app", "conf": "gunicorn.conf.py", "env": {"TAGIFAI_BATCHING": "false"}},
    # what a user would write first: scikit-learn per request, Gunicorn's default (sync) workers
    "minimal Flask + sklearn": {"app": "benchmarks.peers.flask_minimal:app", "conf": None, "args": []},
    # what production guides recommend for model serving: FastAPI + an asyncio dynamic batcher
    # (2 uvicorn workers, the same scikit-learn pipeline as the minimal Flask app)
    "asyncio batcher (FastAPI)": {"app": "benchmarks.peers.fastapi_batcher:app", "server": "uvicorn",
                                  "args": ["--no-access-log"]},
    # the framework's ceiling: a JSON echo on the same worker type as the service
    "bare Flask echo": {"app": "benchmarks.peers.flask_echo:app", "conf": None,
                        "args": ["-k", "gthread", "--threads", "16"]},
}
MODEL_PEERS = ("minimal Flask + sklearn", "asyncio batcher (FastAPI)")  # peers that serve the model


@contextlib.contextmanager
def serve(name: str, root: Path, tmp: Path, extra_env: dict[str, str] | None = None,
          cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Serve one target (Gunicorn, or uvicorn for the FastAPI peer) on a free loopback port, until the
    block ends; the process has the port as ``.port``. ``cwd`` is the source tree served (another
    revision's, for ``--baseline``)."""
    target = TARGETS[name]
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TAGIFAI_", "PROMETHEUS_MULTIPROC_DIR"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "BENCH_ARTIFACTS_DIR": str(root),
        "BENCH_MODEL_VERSION": default_version(root),  # what the peers serve
    }
    bindir = Path(sys.executable).parent
    if target.get("server") == "uvicorn":
        cmd = [str(bindir / "uvicorn"), target["app"], "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
               *target["args"]]
    elif target["conf"]:
        env.update({"TAGIFAI_ARTIFACTS_DIR": str(root),
                    # this tree's keys file, not one next to another revision's code
                    "TAGIFAI_API_KEYS_FILE": str(settings.DEFAULTS["API_KEYS_FILE"]),
                    # this tree's store (a revision from before the store knows no such setting)
                    **({"TAGIFAI_DATABASE_URL": database_url()}
                       if "DATABASE_URL" in (cwd / "tagifai_api" / "settings.py").read_text() else {}),
                    "TAGIFAI_CACHE_SIZE": "0",  # rotating texts: measure the model, not a cache
                    **target["env"]})
        cmd = [str(bindir / "gunicorn"), "-c", target["conf"], target["app"]]
    else:
        empty = tmp / "empty.conf.py"  # not the service's gunicorn.conf.py
        empty.write_text("")
        cmd = [str(bindir / "gunicorn"), "-c", str(empty), "-w", "2", "-b", f"127.0.0.1:{port}", *target["args"],
               target["app"]]
    env.update(extra_env or {})
    if target.get("conf"):  # the service's own trees (the peers have no TAGIFAI_ settings)
        known = (cwd / "tagifai_api" / "settings.py").read_text()
        env.update({f"TAGIFAI_{k}": v for k, v in SETTINGS.items() if f'"{k}"' in known})
    log = tempfile.NamedTemporaryFile(prefix="tagifai-bench-", suffix=".log", delete=False)
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    server.port = port
    try:
        _wait_ready(port, server)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        os.unlink(log.name)


def _cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a server process and each of its children, by pid."""
    import psutil

    out = {}
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = times.user + times.system
    return out


def _cpu_figures(before: dict[int, float], after: dict[int, float], requests: int, seconds: float) -> dict:
    """Server CPU per request, and how evenly its two busiest processes shared the load (the less
    busy one's CPU over the busier one's: 1.0 is an even split, near 0.5 one worker did twice the work)."""
    used = sorted((after[pid] - before.get(pid, 0.0) for pid in after), reverse=True)
    total = sum(used)
    busiest = used[:2] + [0.0] * (2 - len(used[:2]))
    return {"cpu_us_per_req": round(total / max(requests, 1) * 1e6, 1),
            "worker_balance": round(busiest[1] / busiest[0], 2) if busiest[0] else 0.0,
            "process_cores": [round(u / seconds, 2) for u in used]}


def http(name: str, root: Path, wrk: str, seconds: float, bodies: dict[int, Path], tmp: Path,
         scenarios: list[tuple] = HTTP_SCENARIOS, cwd: Path = ROOT) -> dict:
    """Run every scenario against one target."""
    with serve(name, root, tmp, cwd=cwd) as server:
        sampler = RssSampler(server.pid)
        sampler.start()
        results = {}
        for scenario, conns, threads, per_request in scenarios:
            before = _cpu_seconds(server.pid)
            r = _wrk(wrk, server.port, conns, threads, seconds, bodies[per_request])
            cpu = _cpu_figures(before, _cpu_seconds(server.pid), r["requests"], r["seconds"])
            results[scenario] = {
                "req_per_s": round(r["req_per_s"], 1),
                "texts_per_s": round(r["req_per_s"] * per_request),
                "p50_ms": round(r["p50_ms"], 2),
                "p99_ms": round(r["p99_ms"], 2),
                "errors": r["errors"],
                **cpu,
            }
        sampler.stop.set()
        sampler.join(1)
        results["peak_rss_mb"] = round(sampler.peak / 2**20, 1)
        return results


def median_of_rounds(rounds: list[dict], scenarios: list[tuple] = HTTP_SCENARIOS) -> dict:
    """Per scenario and figure, the median over rounds (errors are summed, peak RSS is the max)."""
    out = {}
    for scenario, *_ in scenarios:
        runs = [r[scenario] for r in rounds]
        out[scenario] = {k: round(statistics.median(run[k] for run in runs), 2) for k in runs[0]
                         if k not in ("errors", "process_cores")}
        out[scenario]["errors"] = sum(run["errors"] for run in runs)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    return out


def _wait_ready(port: int, server: subprocess.Popen) -> None:
    import requests

    deadline = time.monotonic() + 60
    ready = 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("gunicorn exited during start-up")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                ready += 1
                if ready >= 4:  # both workers are very likely up by now
                    time.sleep(0.5)
                    return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError("the server did not become ready")


# --- report -----------------------------------------------------------------------------------

def table(result: dict) -> str:
    lines = ["In-process, texts/s (one process each):",
             f"  {'batch':>6} {'scikit-learn':>13} {'fast path':>10} {'speed-up':>9}"]
    for size in (1, 32, 100):
        r = result["in_process"][f"batch_{size}"]
        lines.append(f"  {size:>6} {r['sklearn_texts_per_s']:>13,} {r['fast_texts_per_s']:>10,} {r['speedup']:>8}x")
    lines.append(f"  scikit-learn, batch 100, 2 processes: "
                 f"{result['in_process']['sklearn_batch_100_two_processes_texts_per_s']:,} texts/s")
    lines.append("")
    lines += explain_cost.table(result["explain"])
    lines.append("")
    lines.append(f"Over HTTP, 2 workers each, wrk on loopback, median of {result['rounds']} interleaved rounds:")
    lines.append(f"  {'scenario':<19} {'service':<26} {'req/s':>8} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
                 f"{'errors':>6} {'CPU us/req':>10} {'balance':>7}")
    for scenario, *_ in HTTP_SCENARIOS:
        for name in TARGETS:
            r = result["http"][name][scenario]
            lines.append(f"  {scenario:<19} {name:<26} {r['req_per_s']:>8,.0f} {r['texts_per_s']:>8,.0f} "
                         f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['errors']:>6} {r['cpu_us_per_req']:>10,.0f} "
                         f"{r['worker_balance']:>7.2f}")
    c64 = "1 text, 64 conns"
    lines.append(f"  {c64}, each round (req/s, balance): " + "; ".join(
        f"{name}: " + ", ".join(f"{run[c64]['req_per_s']:,.0f} ({run[c64]['worker_balance']:.2f})"
                                for run in result["http_rounds"][name])
        for name in ("tagifai, batching on", "asyncio batcher (FastAPI)")))
    lines.append("  peak RSS, master + workers: " + ", ".join(
        f"{name} {result['http'][name]['peak_rss_mb']:.0f} MB" for name in TARGETS))
    lines.append("")
    lines.append("Ratios (batching on):")
    for label, value in ratios(result).items():
        lines.append(f"  {label:<60} {value}")
    return "\n".join(lines)


def _ratio(label: str, value: float, target: str | None = None, met: bool | None = None) -> tuple[str, str]:
    text = f"{value:.2f}x"
    if target is not None:
        text += f" (target {target}: {'met' if met else 'MISSED'})"
    return label, text


def ratios(result: dict) -> dict[str, str]:
    """The figures the service is held to, each as a ratio to a peer measured in the same run."""
    http = result["http"]
    on, off = http["tagifai, batching on"], http["tagifai, batching off"]
    minimal, batcher, echo = http["minimal Flask + sklearn"], http["asyncio batcher (FastAPI)"], http["bare Flask echo"]
    c64, c16, c1, big = "1 text, 64 conns", "1 text, 16 conns", "1 text, 1 conn", "100 texts, 4 conns"
    sk2 = result["in_process"]["sklearn_batch_100_two_processes_texts_per_s"]
    r64 = on[c64]["req_per_s"] / batcher[c64]["req_per_s"]
    p99 = on[c64]["p99_ms"] / batcher[c64]["p99_ms"]
    r16 = on[c16]["req_per_s"] / batcher[c16]["req_per_s"]
    p50 = on[c1]["p50_ms"] / minimal[c1]["p50_ms"]
    big_ratio = on[big]["texts_per_s"] / sk2
    errors = sum(run[s]["errors"] for runs in result["http_rounds"].values() for run in runs for s, *_ in HTTP_SCENARIOS)
    out = dict([
        _ratio("1 text, 64 conns, req/s vs asyncio batcher", r64, ">= 1.3x", r64 >= 1.3),
        _ratio("1 text, 64 conns, p99 vs asyncio batcher", p99, "<= 1.0x", p99 <= 1.0),
        _ratio("1 text, 16 conns, req/s vs asyncio batcher", r16, ">= 1.5x", r16 >= 1.5),
        _ratio("1 text, 1 conn, p50 vs minimal Flask + sklearn", p50, "<= 0.6x", p50 <= 0.6),
        _ratio("100 texts, 4 conns, texts/s vs scikit-learn in 2 processes", big_ratio, ">= 1.5x", big_ratio >= 1.5),
    ])
    for peer in MODEL_PEERS:
        rss = on["peak_rss_mb"] / http[peer]["peak_rss_mb"]
        out.update([_ratio(f"peak RSS vs {peer}", rss, "< 1.0x", rss < 1.0)])
    out["answers other than 200, every service and round"] = f"{errors} (target 0: {'met' if errors == 0 else 'MISSED'})"
    out.update([
        _ratio("1 text, 64 conns, req/s vs minimal Flask + sklearn", on[c64]["req_per_s"] / minimal[c64]["req_per_s"]),
        _ratio("1 text, 64 conns, req/s vs bare Flask echo", on[c64]["req_per_s"] / echo[c64]["req_per_s"]),
        _ratio("1 text, 64 conns, req/s batching on vs off", on[c64]["req_per_s"] / off[c64]["req_per_s"]),
        _ratio("1 text, 64 conns, server CPU per request vs asyncio batcher",
               on[c64]["cpu_us_per_req"] / batcher[c64]["cpu_us_per_req"]),
    ])
    return out


# --- against another revision ------------------------------------------------------------------

SETTINGS: dict[str, str] = {}  # --setting NAME=VALUE, for every served tree whose settings know NAME
SERVICE = "tagifai, batching on"  # the target both sides of a --baseline comparison serve
HELD_TO = {"1 text, 64 conns": 0.97}  # a change keeps at least this share of the baseline's req/s


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def export_revision(rev: str, dest: Path) -> str:
    """Write the files of revision ``rev`` into ``dest`` (``git archive``: the repository gains no
    worktree to clean up); the full commit id."""
    try:
        commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"--baseline {rev}: not a commit of this repository")
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True,
                             check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def compare(tree: Path, root: Path, wrk: str, seconds: float, bodies: dict[int, Path], tmp: Path,
            scenarios: list[tuple], rounds: int) -> dict:
    """The service from this tree and from ``tree`` in alternating rounds: current then baseline,
    then baseline then current, and so on, so a drift in the machine's load falls on both alike."""
    sides = {"current": ROOT, "baseline": tree}
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    order = []
    for i in range(rounds):
        turn = list(sides) if i % 2 == 0 else list(sides)[::-1]
        order.append(turn)
        for side in turn:
            print(f"round {i + 1}: {side} ...", file=sys.stderr)
            runs[side].append(http(SERVICE, root, wrk, seconds, bodies, tmp, scenarios, cwd=sides[side]))
    medians = {side: median_of_rounds(r, scenarios) for side, r in runs.items()}
    return {"order": order, "http_rounds": runs, "http": medians, "ratios": baseline_ratios(runs, medians, scenarios)}


def baseline_ratios(runs: dict[str, list[dict]], medians: dict[str, dict], scenarios: list[tuple]) -> dict:
    """Per scenario, current over baseline: of the medians, and of req/s in each round."""
    change = {}
    for scenario, *_ in scenarios:
        cur, base = medians["current"][scenario], medians["baseline"][scenario]
        q = {k: cur[k] / base[k] for k in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_req") if base[k]}
        change[scenario] = {f"{k}_ratio": round(v, 3) for k, v in q.items()}  # none where the baseline had 0
        # a round's two runs are seconds apart, so their ratio is blind to slower drifts in the load
        paired = [c[scenario]["req_per_s"] / b[scenario]["req_per_s"]
                  for c, b in zip(runs["current"], runs["baseline"], strict=True) if b[scenario]["req_per_s"]]
        change[scenario]["req_per_s_round_ratios"] = [round(r, 3) for r in paired]
        if paired:
            change[scenario]["req_per_s_median_round_ratio"] = round(statistics.median(paired), 3)
        if scenario in HELD_TO:
            change[scenario]["req_per_s_target"] = f">= {HELD_TO[scenario]}x"
            change[scenario]["req_per_s_met"] = q.get("req_per_s", 0.0) >= HELD_TO[scenario]
    return change


def comparison_table(result: dict) -> str:
    base = result["baseline"]
    lines = [f"{SERVICE}, 2 workers, wrk on loopback, median of {result['rounds']} alternating rounds:",
             f"  current:  this tree ({base['current_commit'][:12]}"
             f"{', with uncommitted changes' if base['current_dirty'] else ''})",
             f"  baseline: {base['rev']} ({base['commit'][:12]})",
             f"  {'scenario':<19} {'':<9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU us/req':>10}"]
    for scenario, *_ in result["scenarios"]:
        for side in ("current", "baseline"):
            r = result["http"][side][scenario]
            lines.append(f"  {scenario:<19} {side:<9} {r['req_per_s']:>8,.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
                         f"{r['errors']:>6} {r['cpu_us_per_req']:>10,.0f}")
        q = result["ratios"][scenario]
        shown = [f"{label} {q[key]:.3f}x" for label, key in
                 (("req/s", "req_per_s_ratio"), ("p99", "p99_ms_ratio"), ("CPU per request", "cpu_us_per_req_ratio"))
                 if key in q]
        if "req_per_s_target" in q:
            shown[0] += f" (target {q['req_per_s_target']}: {'met' if q['req_per_s_met'] else 'MISSED'})"
        lines.append(f"  {scenario:<19} current/baseline, of the medians: " + ", ".join(shown))
        lines.append(f"  {scenario:<19} each round, req/s current / baseline (ratio): " + "; ".join(
            f"{c[scenario]['req_per_s']:,.0f} / {b[scenario]['req_per_s']:,.0f} ({r:.2f})" for c, b, r in
            zip(result["http_rounds"]["current"], result["http_rounds"]["baseline"], q["req_per_s_round_ratios"],
                strict=True)) + f"; median {q.get('req_per_s_median_round_ratio', float('nan')):.3f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each HTTP scenario")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over all services (with --baseline: over current and baseline)")
    parser.add_argument("--inproc-seconds", type=float, default=2.0, help="duration of each in-process measurement")
    parser.add_argument("--artifacts", type=Path, default=Path(settings.DEFAULTS["ARTIFACTS_DIR"]))
    parser.add_argument("--baseline", metavar="REV",
                        help="instead: this tree against git revision REV, the --scenario ones only")
    parser.add_argument("--scenario", action="append", metavar="NAME", choices=[name for name, *_ in HTTP_SCENARIOS],
                        help="with --baseline, a scenario to compare (repeat for more; default: 1 text, 64 conns)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="set TAGIFAI_NAME for every served tree whose settings know NAME (repeatable)")
    opts = parser.parse_args()
    if opts.scenario and not opts.baseline:
        parser.error("--scenario goes with --baseline")
    for item in opts.setting:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--setting {item!r}: expected NAME=VALUE, for example PREDICTION_LOG=off")
        SETTINGS[name.upper().removeprefix("TAGIFAI_")] = value
    result_settings = dict(SETTINGS)

    wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is not installed: `apt-get install wrk` (Debian) and run `make bench` again")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tagifai_api.store.database import StoreError

    try:
        default_version(opts.artifacts)
    except StoreError as exc:  # a store never set up, or unreachable: one line, as the service says it
        sys.exit(f"bench: {exc} (or `make model`, which does that and trains a default version)")
    started = time.time()
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "model_version": default_version(opts.artifacts),
        "rounds": opts.rounds,
        "settings": result_settings,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: others' work skews figures
    }
    if not opts.baseline:
        print("in-process ...", file=sys.stderr)
        result["in_process"] = in_process(opts.artifacts, opts.inproc_seconds)
        result["explain"] = explain_cost.in_process(opts.artifacts, 2 * opts.inproc_seconds)
    texts = dataset_texts()
    with tempfile.TemporaryDirectory(prefix="tagifai-bench-") as tmp:
        bodies = {n: Path(tmp) / f"bodies-{n}.jsonl" for n in (1, 100)}
        for n, path in bodies.items():
            _write_bodies(path, texts, n)
        if opts.baseline:
            tree = Path(tmp) / "baseline"
            result["baseline"] = {"rev": opts.baseline, "commit": export_revision(opts.baseline, tree),
                                  "current_commit": _git("rev-parse", "HEAD"),
                                  "current_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
            result["scenarios"] = [s for s in HTTP_SCENARIOS if s[0] in (opts.scenario or ["1 text, 64 conns"])]
            result.update(compare(tree, opts.artifacts, wrk, opts.seconds, bodies, Path(tmp), result["scenarios"],
                                  opts.rounds))
        else:
            rounds: dict[str, list[dict]] = {name: [] for name in TARGETS}
            for i in range(opts.rounds):
                for name in TARGETS:
                    print(f"over HTTP, round {i + 1}: {name} ...", file=sys.stderr)
                    rounds[name].append(http(name, opts.artifacts, wrk, opts.seconds, bodies, Path(tmp)))
            result["http_rounds"] = rounds
            result["http"] = {name: median_of_rounds(r) for name, r in rounds.items()}
            result["ratios"] = ratios(result)
    if opts.baseline:
        _write_report(result, started, comparison_table(result), "bench-baseline")
    else:
        _write_report(result, started, table(result), "bench")


def save_report(prefix: str, result: dict) -> Path:
    """Write ``result`` as ``reports/bench/<prefix>-<UTC time>.json``, every benchmark's report; its path."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    out = REPORTS / f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def _write_report(result: dict, started: float, text: str, prefix: str) -> None:
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    out = save_report(prefix, result)
    print(text)
    print(f"\nload average (1, 5, 15 min) before {result['load_average_before']}, after {result['load_average_after']}")
    print(f"{result['seconds']} s; written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
