"""TagIfAI API: tags ML project descriptions over HTTP. :func:`create_app` is the only wiring point."""

from __future__ import annotations

from collections.abc import Mapping


def create_app(config: Mapping[str, object] | None = None):
    """Build the Flask app.

    Settings are the defaults in :mod:`tagifai_api.settings`, then ``TAGIFAI_*`` environment
    variables, then ``config``. The default model is loaded here, once per process (Gunicorn
    workers each call this after forking); other versions on first use.
    """
    from werkzeug.middleware.proxy_fix import ProxyFix

    from tagifai_api import demo, settings
    from tagifai_api.auth import guard
    from tagifai_api.ml import artifacts
    from tagifai_api.feedback import views as feedback_views
    from tagifai_api.monitoring import views as drift_views
    from tagifai_api.monitoring.metrics import DriftCollector
    from tagifai_api.monitoring.service import DriftMonitor
    from tagifai_api.registry import views as registry_views
    from tagifai_api.retrain import views as retrain_views
    from tagifai_api.serving.predlog import PredictionLog
    from tagifai_api.serving.service import ModelService
    from tagifai_api.store import open_store
    from tagifai_api.store.registry import Registry
    from tagifai_api.telemetry import logs, metrics
    from tagifai_api.web import errors, openapi, responses, schemas
    from tagifai_api.web.access import register_access_log
    from tagifai_api.web.app import TagifaiFlask
    from tagifai_api.web.context import EXTENSION, Tagifai
    from tagifai_api.web.views import args, docs, health, index, performance, predict

    app = TagifaiFlask(__name__)
    app.json = responses.OrjsonProvider(app)
    app.make_default_options_response = responses.options_response
    # "/args//threshold" is a 404 envelope: merging the slashes would answer a 308 in HTML, to a
    # Location built from the client-set (forwarded) host; set before any route is added
    app.url_map.merge_slashes = False
    app.config.update(settings.resolve(config))
    app.config["PROPAGATE_EXCEPTIONS"] = False  # every failure answers in the envelope, tests included
    logs.configure(str(app.config["LOG_LEVEL"]))

    if app.config["PROXY_COUNT"]:
        n = int(app.config["PROXY_COUNT"])
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n)

    model_metrics, http_metrics, exporter = metrics.init_metrics(app) if app.config["METRICS"] else (None,) * 3
    store = open_store(app.config, on_error=model_metrics.store_error if model_metrics is not None else None)
    prediction_log = PredictionLog(store, record=app.config["PREDICTION_LOG"] != "off",
                                   keep_texts=app.config["PREDICTION_LOG"] == "texts",
                                   days=float(app.config["PREDICTION_LOG_DAYS"]),
                                   queue_bytes=int(float(app.config["PREDICTION_LOG_QUEUE_MB"]) * (1 << 20)),
                                   on_drop=model_metrics.log_dropped_rows if model_metrics is not None else None)
    service = ModelService(
        Registry(store, app.config["ARTIFACTS_DIR"]),
        str(app.config["MODEL_VERSION"]),
        batching=bool(app.config["BATCHING"]),
        max_texts=int(app.config["BATCH_MAX_TEXTS"]),
        max_wait_s=float(app.config["BATCH_MAX_WAIT_MS"]) / 1000.0,
        queue_size=int(app.config["BATCH_QUEUE_SIZE"]),
        cache_size=int(app.config["CACHE_SIZE"]),
        observer=model_metrics,
        max_loaded=int(app.config["MAX_LOADED_VERSIONS"]),
        poll_s=float(app.config["REGISTRY_POLL_S"]),
        shadow_queue_size=int(app.config["SHADOW_QUEUE_SIZE"]),
        prediction_log=prediction_log,
        fallback=bool(app.config["FALLBACK"]),
    )
    tagifai = app.extensions[EXTENSION] = Tagifai(
        service=service,
        predict_schema=schemas.predict_request_schema(int(app.config["MAX_TEXTS"]), int(app.config["MAX_TEXT_LENGTH"])),
        metrics=model_metrics,
        http_metrics=http_metrics,
        exporter=exporter,
    )

    for module in (index, performance, args, predict, health, docs, registry_views, retrain_views, feedback_views,
                   demo):
        app.register_blueprint(module.bp)
    monitor = DriftMonitor(store, service.artifacts_dir, window=int(app.config["DRIFT_WINDOW"]),
                           minimum=int(app.config["DRIFT_MIN"]), thresholds=settings.drift_thresholds(app.config),
                           cache_s=float(app.config["DRIFT_CACHE_S"]))
    drift_views.init_app(app, monitor)
    if exporter is not None:
        def versions_now() -> list[str]:  # read at each scrape: a version added since is covered
            return artifacts.list_versions(monitor.artifacts_dir)

        metrics.add_scrape_collector(exporter, DriftCollector(monitor, versions_now))
    errors.register_error_handlers(app)
    register_access_log(app)
    app.after_request(responses.secure_headers)
    guard.init_app(app, store)  # after the access log: a refused request still gets its id and access line
    default = service.model.version if service.ready else None
    others = [v for v in artifacts.list_versions(service.artifacts_dir) if v != default]
    tagifai.openapi = openapi.build_spec(
        app, int(app.config["MAX_TEXTS"]), int(app.config["MAX_TEXT_LENGTH"]), default,
        others[-1] if others else None, guard.key_requirements(app), service.model.labels if service.ready else None)
    return app
