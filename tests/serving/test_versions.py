"""Several versions in one worker: loaded on first use, LRU-bounded, each with its own batches; the
default followed from the store; the shadow scored off the request's path."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tagifai_api.ml.artifacts import ArtifactError
from tagifai_api.serving.service import ModelService
from tests.helpers import copy_version, open_registry, wait_until


class Recorder:
    def __init__(self):
        self.batches, self.loaded, self.shadows, self.dropped = [], [], [], []

    def batch(self, stats, version):
        self.batches.append((version, stats.texts))

    def cache(self, hits, misses):
        pass

    def model_loaded_now(self, version, loaded_at):
        self.loaded.append(version)

    def shadow(self, model_version, shadow_version, agree, disagree):
        self.shadows.append((model_version, shadow_version, agree, disagree))

    def shadow_dropped(self, shadow_version, reason, count):
        self.dropped.append((shadow_version, reason, count))


@pytest.fixture
def service_factory():
    services = []

    def make(root, **kwargs):
        kwargs.setdefault("cache_size", 0)
        kwargs.setdefault("poll_s", 0)
        s = ModelService(open_registry(root), **kwargs)
        services.append(s)
        return s

    yield make
    for s in services:
        s.close()
        s.registry.store.close()


@pytest.fixture
def registry(registry_root):
    """The registry as another process changes it (the command line, another worker): a store of its own."""
    opened = open_registry(registry_root[0])
    yield opened
    opened.store.close()


def test_versions_load_on_first_use_and_the_least_recently_used_goes_first(registry_root, service_factory):
    root, first, second = registry_root
    third = copy_version(root, second, "v29990101T000000000000Z")
    fourth = copy_version(root, second, "v29990102T000000000000Z")
    s = service_factory(root, max_loaded=3)
    assert s.loaded_versions() == [first]
    for v in (second, third):
        assert s.predict(["YOLO"], 5.0, served=s.get(v))
    assert s.loaded_versions() == [first, second, third]
    s.get(second)  # used again: now the most recent
    evicted_batcher = s.get(third).batcher
    s.get(second)
    s.get(fourth)
    assert s.loaded_versions() == [first, second, fourth]  # third went; the default stays though oldest
    assert evicted_batcher._closed
    assert s.get() is s.default and s.default.version == first



def test_the_shadow_is_never_evicted_even_with_one_version_allowed(registry_root, registry, service_factory):
    """TAGIFAI_MAX_LOADED_VERSIONS at its minimum (1): the default and the shadow stay loaded however
    many other versions requests ask for; only those others are evicted."""
    root, first, second = registry_root
    third = copy_version(root, second, "v29990101T000000000000Z")
    fourth = copy_version(root, second, "v29990102T000000000000Z")
    obs = Recorder()
    s = service_factory(root, max_loaded=1, observer=obs, batching=False)
    registry.set_shadow(second)
    s.refresh()
    s.predict(["YOLO"], 5.0)
    wait_until(lambda: s.shadow.scored == 1, what="the shadow's first score")
    shadow = s.get(second)
    for other in (third, fourth):
        s.predict(["YOLO"], 5.0, served=s.get(other))
        assert s.loaded_versions() == [first, second, other]
    assert s.get(second) is shadow  # the very same loaded model, not one loaded again
    s.predict(["BERT for question answering"], 5.0)
    wait_until(lambda: s.shadow.scored == 4, what="every request scored by the shadow")
    assert sorted(model for model, *_ in obs.shadows) == sorted([first, third, fourth, first])
    assert {shadow_version for _, shadow_version, *_ in obs.shadows} == {second} and obs.dropped == []
    assert s.get(second) is shadow

def test_an_evicted_version_still_answers_a_request_that_picked_it_up(registry_root, service_factory):
    root, first, second = registry_root
    third = copy_version(root, second, "v29990101T000000000000Z")
    s = service_factory(root, max_loaded=2)
    picked = s.get(second)
    s.get(third)  # evicts second and closes its batcher
    assert second not in s.loaded_versions()
    (answer,) = s.predict(["YOLO"], 5.0, served=picked)
    assert answer == picked.predictor.predict(["YOLO"])[0]
    assert second in s.loaded_versions()  # loaded again for it


def test_batches_never_mix_versions(registry_root, service_factory, model_hook):
    root, first, second = registry_root
    calls = []

    def hook(fn, cleaned):
        calls.append((fn.__self__.version, list(cleaned)))
        time.sleep(0.002)  # let requests pile up into batches
        return fn(cleaned)

    s = model_hook(service_factory(root, max_wait_s=0.005), hook)
    sent = {}

    def client(i):
        version = (first, second)[i % 2]
        text = f"project {i} about {'images' if i % 2 else 'language'}"
        served = s.get(version)
        sent[served.predictor.clean(text)] = version
        with served.batcher.arriving() as arrival:
            return s.predict([text], 5.0, arrival, served)

    with ThreadPoolExecutor(16) as pool:
        assert all(len(r) == 1 for r in pool.map(client, range(200)))
    assert any(len(texts) > 1 for _, texts in calls), "no batch formed"
    for version, texts in calls:
        assert {sent[t] for t in texts if t in sent} <= {version}


def test_the_default_is_followed_from_the_store_and_a_bad_one_is_not_served(registry_root, registry, service_factory,
                                                                              caplog):
    root, first, second = registry_root
    obs = Recorder()
    s = service_factory(root, poll_s=0.02, observer=obs)
    registry.set_default(second)
    wait_until(lambda: s.default.version == second)
    assert obs.loaded == [first, second]
    # a default recorded without verification (a store written by hand) naming a damaged version: the
    # worker keeps serving the last good default
    damaged = copy_version(root, first, "v29990101T000000000000Z")
    (root / damaged / "model.npz").write_bytes(b"x")
    registry.store.set_default(damaged, verifier=lambda _: None)
    wait_until(lambda: "default model not loaded (still serving" in caplog.text)
    assert s.get().version == second and s.ready
    with pytest.raises(ArtifactError, match="does not match"):
        s.get(damaged)


def test_a_pinned_version_ignores_the_pointer(registry_root, registry, service_factory):
    root, first, second = registry_root
    s = service_factory(root, version=second)
    registry.set_default(first)
    s.refresh()
    assert s.default.version == second and s.pinned == second


def test_shadow_scores_off_the_request_path_and_counts_agreement(registry_root, registry, service_factory, model_hook):
    root, first, second = registry_root
    obs = Recorder()
    slow = threading.Event()

    def hook(fn, cleaned):
        if fn.__self__.version == second:
            slow.wait(5)  # the shadow is slow: the client must not notice
        return fn(cleaned)

    s = model_hook(service_factory(root, observer=obs, batching=False), hook)
    registry.set_shadow(second)
    s.refresh()
    assert s.shadow_version == second
    texts = ["YOLO object detection", "a project", "BERT for question answering", "things"]
    started = time.monotonic()
    s.predict(texts, 5.0)
    assert time.monotonic() - started < 1.0
    slow.set()
    wait_until(lambda: obs.shadows)
    (model_version, shadow_version, agree, disagree), = obs.shadows
    assert (model_version, shadow_version) == (first, second)
    assert agree + disagree == len(texts)
    # the shadow (threshold 0.75) calls the vague texts 'other'; the default does not
    served = [r["predicted_tag"] for r in s.predict(texts, 5.0, served=s.get(first))]
    shadow = [r["predicted_tag"] for r in s.get(second).predictor.predict(texts)]
    assert disagree == sum(a != b for a, b in zip(served, shadow)) > 0
    assert second in s.loaded_versions()


def test_a_full_shadow_queue_drops_and_counts(registry_root, registry, service_factory):
    root, first, second = registry_root
    obs = Recorder()
    gate, entered = threading.Event(), threading.Event()
    s = service_factory(root, observer=obs, batching=False, shadow_queue_size=2)
    s.shadow.max_wait_s = 0.01  # score soon, so the first request holds the thread while the rest arrive
    s.shadow.get_predictor = lambda v: _Gated(s.get(v).predictor, gate, entered)
    registry.set_shadow(second)
    s.refresh()
    s.predict(["text 0"], 5.0)
    assert entered.wait(5)  # the shadow thread is busy with the first request
    for i in range(1, 10):
        s.predict([f"text {i}"], 5.0)
    gate.set()
    wait_until(lambda: sum(a + d for *_, a, d in obs.shadows) + s.shadow.dropped >= 10)
    # one being scored, two waiting: the other seven were dropped and counted
    assert obs.dropped == [(second, "queue_full", 1)] * 7 and s.shadow.dropped == 7
    assert sum(a + d for *_, a, d in obs.shadows) == 3


class _Gated:
    def __init__(self, predictor, gate, entered):
        self._predictor, self._gate, self._entered = predictor, gate, entered

    def predict(self, texts):
        self._entered.set()
        self._gate.wait(5)
        return self._predictor.predict(texts)


def test_a_broken_shadow_is_counted_and_never_touches_the_answer(registry_root, registry, service_factory):
    root, first, second = registry_root
    obs = Recorder()
    s = service_factory(root, observer=obs, batching=False)
    registry.set_shadow(second)
    s.refresh()
    (root / second / "model.npz").write_bytes(b"damaged after it was set")
    s._loaded.pop(second, None)  # as if evicted: the next use loads it again, and fails
    assert s.predict(["YOLO"], 5.0)[0]["predicted_tag"] == "computer-vision"
    wait_until(lambda: obs.dropped)
    assert obs.dropped == [(second, "error", 1)]


def test_requests_of_the_shadow_version_itself_are_not_shadowed(registry_root, registry, service_factory):
    root, first, second = registry_root
    obs = Recorder()
    s = service_factory(root, observer=obs, batching=False)
    registry.set_shadow(second)
    s.refresh()
    s.predict(["YOLO"], 5.0, served=s.get(second))
    s.shadow.close()  # scores whatever was queued, then stops: nothing may have been
    assert obs.shadows == [] and obs.dropped == [] and s.shadow.scored == 0
