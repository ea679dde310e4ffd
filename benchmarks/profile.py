"""Where one worker's CPU goes under load: py-spy on a live Gunicorn worker while wrk runs.

Serves a `make bench` target, puts single-text load on it with wrk (64 connections by default),
records one worker with ``py-spy record --nonblocking -r 250 -f raw`` (samples of threads blocked in
a wait, with the GIL released, are left out) and prints a summary: the share of samples by layer (Gunicorn's I/O path,
Flask and the app, the model, other) and the top frames, self and inclusive. The raw profile and
the summary are written to ``reports/profiles/``.

    .venv/bin/python -m benchmarks.profile [--conns 64] [--texts 1] [--seconds 10] [--env GUNICORN_THREADS=4]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import run

PROFILES = run.ROOT / "reports" / "profiles"

# the first frame from the leaf up that matches decides a sample's layer (standard-library frames
# such as socket or threading count for whoever called them)
LAYERS = (  # matched against shortened frames: "func (package/module.py)"
    ("model", re.compile(r"\((tagifai_api/ml/|numpy/|sklearn/|scipy/)")),
    ("gunicorn I/O", re.compile(r"\((gunicorn/|tagifai_api/server/worker)")),
    ("flask + app", re.compile(r"\((flask|werkzeug|marshmallow|prometheus|tagifai_api|orjson)")),
)
# a sample whose leaf is one of these is a thread blocked with the GIL released (waiting for work, a
# batch or the poller), not CPU spent: counted apart
WAITS = re.compile(r"^(Condition\.wait|Event\.wait|\w*Selector\.select|wait|_wait_for_tstate_lock|sleep) |"
                   r"^_worker \(concurrent/futures/thread\.py\)")  # an idle pool thread, in the queue's get()
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "lib/python3.11/", str(run.ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def summarize(raw: str, top: int = 25) -> str:
    """Layers' shares and the top self and inclusive frames of a py-spy raw (collapsed) profile."""
    layers: collections.Counter = collections.Counter()
    self_ = collections.Counter()
    incl = collections.Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if WAITS.match(frames[-1]):
            waiting += n
            continue
        total += n
        self_[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        layer = "other"
        for frame in reversed(frames):
            hit = next((name for name, rx in LAYERS if rx.search(frame)), None)
            if hit:
                layer = hit
                break
        layers[layer] += n
    out = [f"{total} busy samples (and {waiting} blocked in a wait, left out)"]
    out += [f"  {name:<14} {100 * n / total:5.1f} %" for name, n in layers.most_common()]
    out.append(f"top {top} self:")
    out += [f"  {100 * n / total:5.1f} %  {f}" for f, n in self_.most_common(top)]
    out.append(f"top {top} inclusive:")
    out += [f"  {100 * n / total:5.1f} %  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="tagifai, batching on", choices=list(run.TARGETS))
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--texts", type=int, default=1, help="texts per request (the bench uses 1 and 100)")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server, repeatable")
    parser.add_argument("--gil", action="store_true",
                        help="only samples of the thread holding the GIL: where the Python CPU goes")
    parser.add_argument("--label", default="profile")
    parser.add_argument("--artifacts", type=Path, default=Path(run.settings.DEFAULTS["ARTIFACTS_DIR"]))
    opts = parser.parse_args()
    import psutil

    wrk = shutil.which("wrk") or sys.exit("wrk is not installed")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    extra = dict(item.split("=", 1) for item in opts.env)
    PROFILES.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    raw_path = PROFILES / f"{opts.label}-{stamp}.raw"
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / f"bodies-{opts.texts}.jsonl"
        run._write_bodies(bodies, run.dataset_texts(), opts.texts)
        with run.serve(opts.target, opts.artifacts, Path(tmp), extra) as server:
            worker = psutil.Process(server.pid).children()[0].pid
            env = {**os.environ, "TAGIFAI_BENCH_BODIES": str(bodies)}
            load = subprocess.Popen([wrk, f"-t{min(2, opts.conns)}", f"-c{opts.conns}", f"-d{opts.seconds + 3}s", "--timeout", "10s",
                                     "-s", str(run.LUA), f"http://127.0.0.1:{server.port}"],
                                    stdout=subprocess.PIPE, text=True, env=env)
            time.sleep(1.5)
            subprocess.run([pyspy, "record", "--nonblocking", "-r", str(opts.rate), "-f", "raw", "-d",
                            str(opts.seconds), "-p", str(worker), "-o", str(raw_path), *(["--gil"] if opts.gil else [])],
                           check=True, capture_output=True, timeout=opts.seconds + 60)
            out, _ = load.communicate(timeout=opts.seconds + 60)
    wrk_line = re.search(r"^JSON(\{.*\})$", out, re.M)
    summary = (f"{opts.target}, {opts.texts} text(s) a request, {opts.conns} connections, env {extra or '{}'}{', --gil' if opts.gil else ''}, "
               f"load {os.getloadavg()}\n"
               f"wrk: {wrk_line.group(1) if wrk_line else out}\n" + summarize(raw_path.read_text()))
    raw_path.with_suffix(".txt").write_text(summary + "\n")
    print(summary)
    print(f"written to {raw_path.relative_to(run.ROOT)} and .txt")


if __name__ == "__main__":
    main()
