"""Text cleaning, and the fallback tag, shared by training and serving (standard library only, so
workers stay small)."""

from __future__ import annotations

import re
import unicodedata

#: the tag of a project no accepted tag fits: a rare tag at training, a low-confidence answer at serving
OTHER = "other"
# public: the explainer (explain.py) retraces these same steps over the original text
LINK = re.compile(r"https?://\S+|www\.\S+")
NON_ALNUM = re.compile(r"[^a-z0-9]+")


def join_text(title: str | None, description: str | None) -> str:
    """The text a project is tagged by: its title, a space, its description."""
    return f"{title or ''} {description or ''}".strip()


def clean_text(text: str, stopwords: frozenset[str] = frozenset()) -> str:
    """Normalise a title + description the way the model was trained on.

    Links go first so that their pieces do not leak in as words. Replacing every run of
    non-alphanumerics by one space both spaces out punctuation and drops it, in one pass.

    Args:
        text: raw text, any unicode.
        stopwords: lower-case words to drop.

    Returns:
        Lower-case ASCII words separated by single spaces (possibly empty).
    """
    text = LINK.sub(" ", text.lower())
    text = NON_ALNUM.sub(" ", text)
    words = text.split()
    if stopwords:
        words = [w for w in words if w not in stopwords]
    return " ".join(words)


def text_key(text: str) -> str:
    """What makes two texts "the same text" when feedback is deduplicated or overrides the dataset:
    Unicode-normalised (NFKC), case-folded and with whitespace runs collapsed, so a correction sent
    with other spacing or capitals replaces the earlier one instead of adding a second row."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
