"""Reference peer: FastAPI + uvicorn with an asyncio dynamic batcher (the design production guides
recommend for model serving), for side-by-side benchmarks.

Requests put (texts, future) on an asyncio.Queue; one background task per worker process collects
requests until BATCH_MAX_SIZE texts (32) are gathered or BATCH_MAX_WAIT_MS (10) has passed since the
first one, runs ONE predict call for the whole batch in the threadpool (so the event loop keeps
accepting), then resolves each request's future with its slice of results. A request with more texts
than the batch size is one batch on its own.

The model: PEER_PREDICT names a callable as "module:function" that maps a list of raw texts to a list
of tags; by default ``benchmarks.peers.sklearn_tags:predict_tags``, the same scikit-learn pipeline the
minimal Flask peer serves, cleaning and low-confidence rule included. Its module is imported once per
worker, at start-up.

Run: uvicorn benchmarks.peers.fastapi_batcher:app --host 127.0.0.1 --port 8000 --workers 2 --no-access-log
Needs: fastapi, uvicorn, pydantic (benchmark-only dependencies, in requirements-dev.txt).

Measured at its best: with ``--workers`` uvicorn binds the listening socket itself with protocol 0,
so asyncio does not set TCP_NODELAY on accepted connections, and as h11 writes a response's headers
and body separately, every response then waited for the client's delayed ACK (about 40 ms at one
connection, 56 ms p50 instead of 13). This module sets TCP_NODELAY for any TCP stream socket, as
asyncio does for sockets it binds itself.
"""
import asyncio
import asyncio.base_events
import importlib
import os
import socket
from contextlib import asynccontextmanager
from datetime import datetime
from http import HTTPStatus
from typing import List, Tuple

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field, field_validator
from starlette.concurrency import run_in_threadpool


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


asyncio.base_events._set_nodelay = _set_nodelay  # see the module docstring

MAX_BATCH_SIZE = int(os.environ.get("BATCH_MAX_SIZE", "32"))
MAX_WAIT_S = float(os.environ.get("BATCH_MAX_WAIT_MS", "10")) / 1000.0


def load_predict_fn():
    module, _, name = os.environ.get("PEER_PREDICT", "benchmarks.peers.sklearn_tags:predict_tags").partition(":")
    return getattr(importlib.import_module(module), name)


class Text(BaseModel):
    text: str = Field(..., min_length=1)


class PredictPayload(BaseModel):
    texts: List[Text]

    @field_validator("texts")
    @classmethod
    def non_empty(cls, value):
        if not value:
            raise ValueError("List of texts to classify cannot be empty.")
        return value


class DynamicBatcher:
    def __init__(self, predict_fn, max_batch_size: int, max_wait_s: float):
        self.predict_fn = predict_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue: "asyncio.Queue[Tuple[List[str], asyncio.Future]]" = asyncio.Queue()
        self._task = None

    def start(self):
        self._task = asyncio.create_task(self._run())

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, texts: List[str]) -> List[str]:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, fut))
        return await fut

    async def _collect(self):
        loop = asyncio.get_running_loop()
        first = await self.queue.get()
        batch = [first]
        n = len(first[0])
        deadline = loop.time() + self.max_wait_s
        while n < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout=remaining)
            except asyncio.TimeoutError:
                break
            batch.append(item)
            n += len(item[0])
        return batch

    async def _run(self):
        while True:
            batch = await self._collect()
            flat = [t for texts, _ in batch for t in texts]
            try:
                results = await run_in_threadpool(self.predict_fn, flat)
            except Exception as exc:  # propagate to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            i = 0
            for texts, fut in batch:
                if not fut.done():
                    fut.set_result(results[i:i + len(texts)])
                i += len(texts)


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.batcher = DynamicBatcher(load_predict_fn(), MAX_BATCH_SIZE, MAX_WAIT_S)
    app.state.batcher.start()
    yield
    await app.state.batcher.stop()


app = FastAPI(title="TagIfAI (dynamic batching)", version="0.1", lifespan=lifespan)


def envelope(request: Request, data=None):
    out = {
        "message": HTTPStatus.OK.phrase,
        "method": request.method,
        "status-code": HTTPStatus.OK,
        "timestamp": datetime.now().isoformat(),
        "url": str(request.url),
    }
    if data is not None:
        out["data"] = data
    return out


@app.get("/")
async def index(request: Request):
    return envelope(request, {})


@app.get("/health/ready")
async def ready():
    return "ok"


@app.post("/predict")
async def predict(request: Request, payload: PredictPayload):
    texts = [t.text for t in payload.texts]
    try:
        tags = await request.app.state.batcher.submit(texts)
    except Exception as exc:
        raise HTTPException(status_code=500, detail=f"prediction failed: {exc}")
    return envelope(request, {"predictions": [{"input_text": t, "predicted_tag": g} for t, g in zip(texts, tags)]})
