"""Loading, cleaning, labelling and splitting the labelled projects."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from sklearn.model_selection import train_test_split

from tagifai_api.ml.text import OTHER, clean_text, join_text  # noqa: F401 - OTHER, join_text: re-exported

STOPWORDS = frozenset(ENGLISH_STOP_WORDS)

def load_dataset(path: str | Path) -> pd.DataFrame:
    """Read the labelled projects CSV (columns id, created_on, title, description, tag)."""
    df = pd.read_csv(path, dtype={"title": str, "description": str, "tag": str})
    missing = {"title", "description", "tag"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df


def map_labels(
    tags: Iterable[str], accepted: Sequence[str], min_freq: int
) -> list[str]:
    """Send tags outside ``accepted``, or rarer than ``min_freq``, to ``other``."""
    tags = list(tags)
    counts = pd.Series(tags).value_counts()
    keep = {t for t in accepted if counts.get(t, 0) >= min_freq}
    return [t if t in keep else OTHER for t in tags]


def prepare(
    df: pd.DataFrame,
    accepted_tags: Sequence[str],
    min_freq: int,
    stopwords: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Add ``text`` (raw title + description), ``clean`` and the mapped ``tag``."""
    out = df.copy()
    out["title"] = out["title"].fillna("")
    out["description"] = out["description"].fillna("")
    out["text"] = [join_text(t, d) for t, d in zip(out["title"], out["description"], strict=True)]
    out["clean"] = [clean_text(t, stopwords) for t in out["text"]]
    out["tag"] = map_labels(out["tag"].fillna(OTHER), accepted_tags, min_freq)
    return out.reset_index(drop=True)


def split(
    df: pd.DataFrame, val_size: float, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Stratified train / validation / test split, reproducible for a given seed."""
    train_val, test = train_test_split(
        df, test_size=test_size, stratify=df["tag"], random_state=seed
    )
    train, val = train_test_split(
        train_val,
        test_size=val_size / (1.0 - test_size),
        stratify=train_val["tag"],
        random_state=seed,
    )
    return (
        train.reset_index(drop=True),
        val.reset_index(drop=True),
        test.reset_index(drop=True),
    )


def time_split(df: pd.DataFrame, newest: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The older projects and the newest ``newest`` share, by ``created_on``.

    New projects are what the service meets; scoring on the newest ones after training on the
    older is a harder, more honest estimate than a random split.
    """
    ordered = df.assign(_when=pd.to_datetime(df["created_on"])).sort_values("_when", kind="stable")
    cut = len(ordered) - max(1, round(len(ordered) * newest))
    ordered = ordered.drop(columns="_when")
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def short_text(texts: Sequence[str], max_words: int = 8) -> np.ndarray:
    """Slice mask: texts with fewer than ``max_words`` words."""
    return np.array([len(t.split()) < max_words for t in texts], dtype=bool)


def nlp_cnn(texts: Sequence[str], tags: Sequence[str]) -> np.ndarray:
    """Slice mask: NLP projects that mention convolutions, which look like vision to the model."""
    pattern = re.compile(r"\b(cnn|cnns|convolution|convolutional)\b")
    return np.array(
        [tag == "natural-language-processing" and bool(pattern.search(t)) for t, tag in zip(texts, tags, strict=True)],
        dtype=bool,
    )
