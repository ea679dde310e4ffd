"""Fitting the TF-IDF + linear pipeline and choosing its low-confidence threshold."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import FeatureUnion, Pipeline

from tagifai_api.ml import data, evaluate, profile
from tagifai_api.ml.compiled import CompiledModel
from tagifai_api.ml.text import clean_text, text_key

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Everything a training run produces, ready to be written as an artifact version."""

    pipeline: Pipeline
    compiled: CompiledModel
    args: dict
    labels: list[str]
    performance: dict
    #: the reference the drift statistics compare live predictions with (:mod:`tagifai_api.ml.profile`)
    profile: dict | None = None
    #: what was fitted on: dataset projects kept, replaced or withheld, extra texts used or left out
    rows: dict = field(default_factory=dict)


def build_features(specs: list[dict]):
    """One TF-IDF vectorizer per spec; several are joined in a FeatureUnion (each l2-normalised)."""
    vectorizers = [
        (
            f"{spec['analyzer']}_{i}",
            TfidfVectorizer(
                analyzer=spec["analyzer"],
                ngram_range=(spec["ngram_min"], spec["ngram_max"]),
                min_df=spec.get("min_df", 1),
                max_df=spec.get("max_df", 1.0),
                sublinear_tf=spec.get("sublinear_tf", False),
                dtype=np.float64,
            ),
        )
        for i, spec in enumerate(specs)
    ]
    return vectorizers[0][1] if len(vectorizers) == 1 else FeatureUnion(vectorizers)


def build_pipeline(args: dict) -> Pipeline:
    """The unfitted pipeline ``args`` describe."""
    vectorizer = build_features(args["features"])
    if args["classifier"] == "sgd":
        clf = SGDClassifier(
            loss="log_loss",
            alpha=args["alpha"],
            max_iter=args["max_iter"],
            class_weight=args["class_weight"],
            random_state=args["seed"],
            tol=1e-4,
        )
    elif args["classifier"] == "logreg":
        clf = LogisticRegression(
            C=args["C"], max_iter=args["max_iter"], class_weight=args["class_weight"], random_state=args["seed"]
        )
    else:
        raise ValueError(f"unknown classifier {args['classifier']!r}; expected 'sgd' or 'logreg'")
    return Pipeline([("tfidf", vectorizer), ("clf", clf)])


def apply_threshold(proba: np.ndarray, classes: Sequence[str], threshold: float) -> list[str]:
    """Top tag per row, or ``other`` when the top probability is below ``threshold``."""
    top = proba.argmax(axis=1)
    return [data.OTHER if proba[i, j] < threshold else classes[j] for i, j in enumerate(top)]


def choose_threshold(proba: np.ndarray, classes: Sequence[str], y_true: Sequence[str], grid: Sequence[float]) -> float:
    """The highest threshold in ``grid`` whose weighted F1 is not below that of no threshold.

    The fallback to ``other`` is a safety net for inputs the model knows little about; it is
    worth keeping only as far as it costs nothing on held-out data.
    """
    def score(t: float) -> float:
        return f1_score(y_true, apply_threshold(proba, classes, t), average="weighted", zero_division=0)

    baseline = score(0.0)
    best = 0.0
    for t in sorted(grid):
        if score(t) >= baseline - 1e-12:
            best = float(t)
    return best


def stopwords_for(args: dict) -> frozenset[str]:
    """The stopword set the args ask for."""
    return data.STOPWORDS if args.get("stopwords") else frozenset()


def cross_validate(df: pd.DataFrame, args: dict, folds: int = 5) -> tuple[float, float]:
    """Mean and standard deviation of weighted F1 over stratified folds of ``df``."""
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=args["seed"])
    scores = cross_val_score(build_pipeline(args), df["clean"], df["tag"], cv=cv, scoring="f1_weighted")
    return float(scores.mean()), float(scores.std())


def time_ordered_score(df: pd.DataFrame, args: dict, newest: float = 0.2) -> dict:
    """Weighted F1 on the newest ``newest`` share of ``df`` after fitting on the older projects."""
    older, newer = data.time_split(df, newest)
    pipeline = build_pipeline(args).fit(older["clean"], older["tag"])
    return {
        "f1_weighted": float(f1_score(newer["tag"], pipeline.predict(newer["clean"]), average="weighted")),
        "train_projects": len(older),
        "test_projects": len(newer),
        "test_from": str(newer["created_on"].min()),
    }


def splits(df: pd.DataFrame, args: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The prepared dataset's train, validation and test splits under ``args`` (the test split is fixed
    by the data, the tags' mapping and the seed, so every version trained from them shares it)."""
    prepared = data.prepare(df, args["accepted_tags"], args["min_tag_freq"], stopwords_for(args))
    return data.split(prepared, args["val_size"], args["test_size"], args["seed"])


def _with_extra(train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame, extra: pd.DataFrame | None,
                withhold: Collection[str], stopwords: frozenset[str]):
    """Train and validation without the dataset projects that ``extra`` replaces or ``withhold`` names,
    and ``extra`` (prepared) without the texts of test projects; plus the counts."""
    extra = extra if extra is not None else pd.DataFrame({"text": [], "tag": []})
    extra = extra.assign(key=[text_key(t) for t in extra["text"]])
    test_keys = {text_key(t) for t in test_df["text"]}
    in_test = extra["key"].isin(test_keys)
    extra = extra[~in_test]
    tags = dict(zip(extra["key"], extra["tag"], strict=True))
    withheld = set(withhold) - set(tags)
    rows = {"extra_in_test": int(in_test.sum()), "extra_used": len(extra)}
    kept = []
    replaced = duplicates = dropped = 0
    for frame in (train_df, val_df):
        keys = [text_key(t) for t in frame["text"]]
        keep = [k not in tags and k not in withheld for k in keys]
        for k, tag in zip(keys, frame["tag"], strict=True):
            if k in tags:
                replaced += tags[k] != tag
                duplicates += tags[k] == tag
            elif k in withheld:
                dropped += 1
        kept.append(frame[keep].reset_index(drop=True))
    rows.update(dataset_replaced=replaced, dataset_duplicates=duplicates, dataset_withheld=dropped)
    extra = pd.DataFrame({"text": list(extra["text"]), "tag": list(extra["tag"]),
                          "clean": [clean_text(t, stopwords) for t in extra["text"]]})
    return kept[0], kept[1], extra, rows


def train(df: pd.DataFrame, args: dict, extra: pd.DataFrame | None = None,
          withhold: Collection[str] = ()) -> TrainResult:
    """Split, fit, choose the threshold, refit on train + validation and evaluate on test.

    The threshold is chosen on the validation split with a model that never saw it; the model
    that ships is then refitted on train + validation, and the test split, untouched until now,
    measures that shipped model.

    Args:
        df: the raw labelled projects.
        args: training arguments (see ``config/args.json``).
        extra: more labelled texts (``text``, ``tag``), such as corrections from users: fitted on
            beside the train split (and in the refit), never in the validation or test split. One
            with the text (:func:`~tagifai_api.ml.text.text_key`) of a train or validation project
            replaces that project, its tag winning; one with a test project's text is left out, so
            the test split stays fixed and unseen.
        withhold: text keys never to fit on (feedback held out for evaluation): dataset projects
            with these texts leave train and validation too.

    Returns:
        The fitted pipeline, its compiled copy, the full args (threshold included), the label
        list, the test-split performance report and the counts of what was fitted on.
    """
    t0 = time.perf_counter()
    stopwords = stopwords_for(args)
    train_df, val_df, test_df = splits(df, args)
    train_df, val_df, extra_df, rows = _with_extra(train_df, val_df, test_df, extra, withhold, stopwords)
    log.info("split: %d train (+%d extra), %d validation, %d test", len(train_df), len(extra_df), len(val_df),
             len(test_df))

    fit_first = pd.concat([train_df, extra_df], ignore_index=True)
    pipeline = build_pipeline(args).fit(fit_first["clean"], fit_first["tag"])
    classes = [str(c) for c in pipeline.classes_]
    val_proba = pipeline.predict_proba(val_df["clean"])
    threshold = choose_threshold(val_proba, classes, val_df["tag"], args["threshold_grid"])
    val_f1 = f1_score(val_df["tag"], apply_threshold(val_proba, classes, threshold), average="weighted")
    log.info("fitted on train in %.1fs; threshold %.2f (validation F1 %.4f)", time.perf_counter() - t0, threshold, val_f1)

    fit_df = pd.concat([train_df, val_df, extra_df], ignore_index=True)
    pipeline = build_pipeline(args).fit(fit_df["clean"], fit_df["tag"])
    compiled = CompiledModel.from_pipeline(pipeline, stopwords=stopwords)
    log.info("refitted on train + validation (%d rows, %d features)", len(fit_df), len(compiled.idf))

    test_pred = apply_threshold(pipeline.predict_proba(test_df["clean"]), classes, threshold)
    performance = evaluate.evaluate(list(test_df["clean"]), list(test_df["tag"]), test_pred, classes)
    log.info("test F1 %.4f on %d rows; %.1fs in all", performance["overall"]["f1"], len(test_df), time.perf_counter() - t0)

    reference = reference_profile(fit_df, test_df, args, compiled, threshold)
    log.info("reference profile of %d texts (%d-fold out of fold + test); %.1fs in all", reference["texts"],
             profile.FOLDS, time.perf_counter() - t0)

    full_args = {**args, "threshold": threshold}
    rows.update(dataset_fitted=len(train_df) + len(val_df), test=len(test_df))
    return TrainResult(pipeline=pipeline, compiled=compiled, args=full_args, labels=classes, performance=performance,
                       profile=reference, rows=rows)


def reference_profile(fit_df: pd.DataFrame, test_df: pd.DataFrame, args: dict, compiled: CompiledModel,
                      threshold: float) -> dict:
    """The reference profile of a version (see :mod:`tagifai_api.ml.profile`): the texts it was fitted
    on (``fit_df``: train + validation), each answered by a model fitted with the same ``args`` on the
    other folds, then the test split answered by the version's own ``compiled`` model."""
    stopwords = stopwords_for(args)
    folds = StratifiedKFold(n_splits=profile.FOLDS, shuffle=True, random_state=args["seed"])
    parts = []
    for fitted_on, held_out in folds.split(fit_df["clean"], fit_df["tag"]):
        fold = build_pipeline(args).fit(fit_df["clean"].iloc[fitted_on], fit_df["tag"].iloc[fitted_on])
        parts.append(profile.observe(CompiledModel.from_pipeline(fold, stopwords), threshold,
                                     fit_df["clean"].iloc[held_out]))
    parts.append(profile.observe(compiled, threshold, test_df["clean"]))
    return profile.build(profile.Observed.join(parts), compiled.classes,
                         f"{len(fit_df)} training texts answered out of {profile.FOLDS} folds, "
                         f"{len(test_df)} test texts answered by the version")


def version_profile(df: pd.DataFrame, args: dict, compiled: CompiledModel) -> dict:
    """The reference profile of an existing version from the raw dataset it was trained on, ``args``
    its own (the threshold included): the same split and folds, so the same profile training writes."""
    df = data.prepare(df, args["accepted_tags"], args["min_tag_freq"], stopwords_for(args))
    train_df, val_df, test_df = data.split(df, args["val_size"], args["test_size"], args["seed"])
    return reference_profile(pd.concat([train_df, val_df], ignore_index=True), test_df, args, compiled,
                             float(args.get("threshold", 0.0)))
