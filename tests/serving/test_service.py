import pytest

from tagifai_api.serving.service import ModelService, ModelUnavailableError
from tests.helpers import default_of, open_registry


class Recorder:
    def __init__(self):
        self.batches, self.caches, self.loaded = [], [], []

    def batch(self, stats, version):
        self.batches.append(stats)

    def cache(self, hits, misses):
        self.caches.append((hits, misses))

    def model_loaded_now(self, version, loaded_at):
        self.loaded.append(version)


@pytest.mark.parametrize("batching", [True, False])
def test_predict_uses_cache_and_keeps_order(artifacts_dir, batching):
    obs = Recorder()
    s = ModelService(open_registry(artifacts_dir), batching=batching, cache_size=10, observer=obs, poll_s=0)
    try:
        first = s.predict(["YOLO object detection", "BERT for question answering"], 5.0)
        again = s.predict(["BERT for question answering!!", "YOLO object detection"], 5.0)  # same cleaned texts
        assert [r["predicted_tag"] for r in first] == ["computer-vision", "natural-language-processing"]
        assert again == first[::-1]
        assert obs.caches == [(0, 2), (2, 0)]
        assert sum(b.texts for b in obs.batches) == 2
        assert obs.loaded == [s.model.version]
    finally:
        s.close()
        s.registry.store.close()


def test_missing_model_is_reported_and_retried(tmp_path, artifacts_dir, monkeypatch):
    import shutil

    from tagifai_api.serving import service as module

    s = ModelService(open_registry(tmp_path / "none"), batching=False, poll_s=0)
    try:
        assert not s.ready
        with pytest.raises(ModelUnavailableError, match="no default model"):
            s.require_model()
        # a model trained after the start: its version appears, then the store records it as the default
        version = default_of(artifacts_dir)
        shutil.copytree(artifacts_dir / version, tmp_path / "none" / version)
        trainer = open_registry(tmp_path / "none")
        trainer.set_default(version)
        trainer.store.close()
        monkeypatch.setattr(module, "_RETRY_LOAD_S", 0.0)
        assert s.require_model() is s.predictor and s.ready and s.model.version == version
    finally:
        s.close()
        s.registry.store.close()


def test_any_load_failure_leaves_the_service_up_and_unready(artifacts_dir, monkeypatch):
    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tagifai_api.ml.artifacts.load", broken)
    s = ModelService(open_registry(artifacts_dir), batching=False, poll_s=0)
    try:
        assert not s.ready
        assert "PermissionError" in s.load_error
        with pytest.raises(ModelUnavailableError):
            s.predict(["anything"], 1.0)
    finally:
        s.close()
        s.registry.store.close()
