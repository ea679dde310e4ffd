"""Every setting of the service, with its default; ``TAGIFAI_<KEY>`` environment variables override.

Standard library only, and no I/O at import: the CLI, the app factory and ``gunicorn.conf.py``
all read from here.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS_FILE = ROOT / "config" / "args.json"
DATA_FILE = ROOT / "data" / "dataset.csv"
ENV_PREFIX = "TAGIFAI_"

#: key -> (default, meaning); the README's configuration table is generated from this.
SETTINGS: dict[str, tuple[object, str]] = {
    "ARTIFACTS_DIR": (str(ROOT / "artifacts"), "Directory of model versions."),
    "DATABASE_URL": (f"sqlite:///{ROOT / 'var' / 'tagifai.db'}",
                     "The state store (registry pointers and history, API keys, audit log): an embedded SQLite "
                     "file by default, created on first start; `postgresql+psycopg://user:password@host/db` for "
                     "replicas that share it."),
    "STORE_UPGRADE": (True, "Create or upgrade the store's schema (and import the old state files) when the app "
                            "starts; Gunicorn's master does it once and turns it off for its workers."),
    "MODEL_VERSION": ("default", "Version to serve by default; `default` follows the registry's default (another "
                                 "value pins it, and the registry cannot switch it)."),
    "FALLBACK": (True, "When a worker cannot load the default (damaged or missing files, a warm-up that fails), "
                       "it serves the newest good version of the default's history and says so; `off`: it "
                       "answers 503 until the default loads."),
    "MAX_LOADED_VERSIONS": (3, "Most model versions a worker keeps loaded; the least recently used goes first, "
                               "never the default or the shadow."),
    "REGISTRY_POLL_S": (0.5, "How often each worker polls the store for changes (registry switches, keys), so one "
                             "reaches it with no signal."),
    "SHADOW_QUEUE_SIZE": (256, "Most answered /predict requests waiting in a worker for the shadow model; beyond "
                               "it they are dropped and counted."),
    "PREDICTION_LOG": ("meta", "Record every text /predict answers in the store: `meta` (the answer, the text's "
                               "hash, length and token counts, not the text), `texts` (the text too, which "
                               "feedback needs to become training data) or `off`."),
    "PREDICTION_LOG_DAYS": (30.0, "Prediction log rows older than this many days are deleted in the background "
                                  "(with the log `off` too)."),
    "PREDICTION_LOG_QUEUE_MB": (16.0, "Most prediction log rows a worker holds before writing them, in MB (while "
                                      "the store is slow or down); beyond it they are dropped and counted."),
    "DRIFT_WINDOW": (1000, "Drift statistics compare a version's newest this many logged predictions with its "
                           "reference profile."),
    "DRIFT_MIN": (200, "Fewer logged predictions than this in the window: `not_enough_data`, never an alarm."),
    "DRIFT_CACHE_S": (5.0, "Seconds a worker reuses the drift statistics it computed (scrapes, /models) before "
                           "reading the log again."),
    "DRIFT_CLASS_JS": ("0.1,0.2", "Warn and drift thresholds of the Jensen-Shannon distance (base 2) between the "
                                  "predicted-class distributions."),
    "DRIFT_CLASS_CHI2_P": ("0.001,0.0001", "Warn and drift thresholds of the chi-squared test's p-value on the "
                                         "predicted classes (below is worse)."),
    "DRIFT_CONFIDENCE_KS": ("0.1,0.2", "Warn and drift thresholds of the Kolmogorov-Smirnov statistic of the "
                                       "top-class confidence (how much more of the window is unsure)."),
    "DRIFT_LENGTH_PSI": ("0.1,0.25", "Warn and drift thresholds of the population stability index of the text "
                                     "length in tokens."),
    "DRIFT_OOV_INCREASE": ("0.1,0.2", "Warn and drift thresholds of the rise of the out-of-vocabulary rate over "
                                      "the reference's (0.1: ten points more of the words unknown)."),
    "RETRAIN_DATA": (str(DATA_FILE), "The labelled dataset a retrained candidate learns from, with the feedback."),
    "RETRAIN_NICE": (19, "Scheduling priority (nice, 0-19) of a retraining started over HTTP: 19, the lowest, leaves "
                         "the CPU to serving; 0 on a host that only trains."),
    "RETRAIN_HOLDOUT": (0.2, "Share of the feedback, the newest by time, held out of retraining: the candidate and "
                             "the default are judged on it."),
    "GATE_MARGIN": (0.01, "Gate: a retrained candidate's weighted F1 on the held-out feedback must beat the "
                          "default's by at least this much."),
    "GATE_TOLERANCE": (0.01, "Gate: its weighted F1 on the test split may be at most this much below the default's."),
    "GATE_MIN_HELD_OUT": (50, "Gate: the fewest held-out feedback texts the two may be judged on."),
    "SHADOW_MIN_TEXTS": (500, "Live texts a shadowed candidate must have scored before `promote --if-better` (or "
                              "POST /models/default/promote-shadow) promotes it."),
    "AUTO_ROLLBACK": (True, "After a promotion, roll back by itself when the new default's live accuracy is worse "
                            "than the previous default's with 95 % confidence; `off` disables it."),
    "AUTO_ROLLBACK_MIN_FEEDBACK": (100, "Corrections of each of the two versions' predictions needed before the "
                                        "automatic rollback compares them."),
    "MAX_TEXTS": (100, "Most texts in one /predict request."),
    "MAX_TEXT_LENGTH": (10_000, "Most characters in one text."),
    "MAX_CONTENT_LENGTH": (8 * 1024 * 1024, "Most bytes in a request body; larger bodies get 413 unread."),
    "BATCHING": (True, "Coalesce concurrent /predict requests of a worker into one model call."),
    "BATCH_MAX_TEXTS": (128, "Most texts in one micro-batch."),
    "BATCH_MAX_WAIT_MS": (2.0, "Longest a batch waits for company, only while other requests are in flight."),
    "BATCH_QUEUE_SIZE": (1024, "Most texts waiting in a worker's queue; beyond it /predict answers 503."),
    "PREDICT_TIMEOUT_MS": (10_000, "A request still queued after this long is dropped with 504."),
    "CACHE_SIZE": (0, "Per-worker LRU cache of predictions, in texts; 0 (the default) turns it off."),
    "PROXY_COUNT": (0, "Reverse-proxy hops whose X-Forwarded-* headers are trusted (0, the default: none; "
                       "1 behind nginx)."),
    "LOG_LEVEL": ("INFO", "Log level of the JSON logs."),
    "LOG_TEXTS": (False, "Also log the input texts (they may be private)."),
    "METRICS": (True, "Expose /metrics and record Prometheus metrics."),
    "AUTH": ("admin", "What needs an API key: `admin` (routes that change what is served), `all` (every route "
                      "but /, /health/*, /metrics and the docs) or `off`."),
    "OIDC_ISSUER": ("", "Accept access tokens (JWTs) of this identity provider (its issuer URL, as in its tokens' "
                        "`iss`), beside API keys; set with TAGIFAI_OIDC_AUDIENCE. Empty: API keys only."),
    "OIDC_AUDIENCE": ("", "The audience (`aud`) the identity provider's tokens must name for this service."),
    "OIDC_ROLES_CLAIM": ("roles", "The token claim holding the roles (a list or a space-separated string); a dotted "
                                  "path such as `realm_access.roles` reaches into an object."),
    "OIDC_PREDICT_ROLE": ("tagifai:predict", "The role value in tokens that grants the predict role."),
    "OIDC_ADMIN_ROLE": ("tagifai:admin", "The role value in tokens that grants the admin role."),
    "OIDC_ALGORITHMS": ("RS256,ES256", "Signature algorithms accepted in tokens, comma-separated; asymmetric ones "
                                       "only (`none` and HMAC are always refused)."),
    "OIDC_LEEWAY_S": (30.0, "Clock skew allowed when checking a token's `exp`, `nbf` and `iat`, in seconds."),
    "OIDC_REFETCH_S": (5.0, "Least time between two fetches of the provider's signing keys by a worker (a token "
                            "naming an unknown key id triggers one)."),
    "OIDC_TIMEOUT_S": (2.0, "Timeout of each request to the identity provider (discovery document, keys)."),
    "API_KEYS_FILE": (str(ROOT / "config" / "api_keys.json"),
                      "The keys file of an install from before the store: imported into an empty store once, on "
                      "first start."),
}

#: settings that take one of a few words
CHOICES: dict[str, tuple[str, ...]] = {"AUTH": ("admin", "all", "off"), "PREDICTION_LOG": ("off", "meta", "texts")}

DEFAULTS: dict[str, object] = {key: default for key, (default, _) in SETTINGS.items()}

#: drift statistic -> its thresholds' setting, and whether a lower value is the worse one (a p-value)
DRIFT_THRESHOLDS: dict[str, tuple[str, bool]] = {
    "class_js": ("DRIFT_CLASS_JS", False),
    "class_chi2_p": ("DRIFT_CLASS_CHI2_P", True),
    "confidence_ks": ("DRIFT_CONFIDENCE_KS", False),
    "length_psi": ("DRIFT_LENGTH_PSI", False),
    "oov_increase": ("DRIFT_OOV_INCREASE", False),
}


class SettingError(ValueError):
    """A ``TAGIFAI_*`` variable the service cannot use; the message names it and what would be valid."""


def _parse(raw: str, default: object) -> object:
    """Read an environment value as the type of its default."""
    if isinstance(default, bool):
        if raw.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.strip().lower() in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number such as {default}, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a number such as {default}, got {raw!r}") from None
    if isinstance(default, str):
        return raw
    return json.loads(raw)


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Defaults overridden by ``TAGIFAI_*`` variables (unknown ones are refused, not ignored)."""
    environ = os.environ if environ is None else environ
    values = dict(DEFAULTS)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):]
        if key not in SETTINGS:
            close = difflib.get_close_matches(key, SETTINGS, n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
            raise SettingError(f"unknown setting {name}{hint}; valid: {', '.join(ENV_PREFIX + k for k in SETTINGS)}")
        try:
            values[key] = _parse(raw, DEFAULTS[key])
        except ValueError as exc:
            raise SettingError(f"{name}: {exc}") from None
    _check_choices(values)
    return values


def _check_choices(values: Mapping[str, object]) -> None:
    for key, allowed in CHOICES.items():
        if values[key] not in allowed:
            raise SettingError(f"{ENV_PREFIX}{key}: expected one of {', '.join(allowed)}, got {values[key]!r}")
    drift_thresholds(values)
    for key in ("PREDICTION_LOG_DAYS", "PREDICTION_LOG_QUEUE_MB"):
        if not float(values[key]) > 0:  # also refuses NaN
            raise SettingError(f"{ENV_PREFIX}{key}: expected a number above 0, got {values[key]!r}")
    if int(values["DRIFT_MIN"]) < 1 or int(values["DRIFT_WINDOW"]) < int(values["DRIFT_MIN"]):
        raise SettingError(f"{ENV_PREFIX}DRIFT_WINDOW and {ENV_PREFIX}DRIFT_MIN: expected 1 <= DRIFT_MIN <= "
                           f"DRIFT_WINDOW, got {values['DRIFT_MIN']!r} and {values['DRIFT_WINDOW']!r}")


def drift_thresholds(values: Mapping[str, object]) -> dict[str, tuple[float, float]]:
    """``{statistic: (warn, drift)}`` from the ``DRIFT_*`` settings ("warn,drift" each); a pair in the
    wrong order (a drift threshold milder than the warning) is refused."""
    out = {}
    for statistic, (key, lower_is_worse) in DRIFT_THRESHOLDS.items():
        raw = values[key]
        try:
            warn, drift = (float(part) for part in str(raw).split(","))
        except ValueError:
            raise SettingError(f"{ENV_PREFIX}{key}: expected two numbers 'warn,drift' such as {DEFAULTS[key]!r}, "
                               f"got {raw!r}") from None
        ordered = 0 <= drift <= warn <= 1 if lower_is_worse else 0 <= warn <= drift
        if not ordered:
            rule = "0 <= drift <= warn <= 1 (p-values)" if lower_is_worse else "0 <= warn <= drift"
            raise SettingError(f"{ENV_PREFIX}{key}: expected {rule}, got {raw!r}")
        out[statistic] = (warn, drift)
    return out


def resolve(overrides: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Defaults < environment < explicit ``overrides`` (what a test passes to ``create_app``)."""
    values = from_env(environ)
    if overrides:
        values.update(overrides)
        _check_choices(values)
    return values
