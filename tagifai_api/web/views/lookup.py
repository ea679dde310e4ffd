"""Dotted look-ups into nested JSON, shared by ``/performance`` and ``/args``."""

from __future__ import annotations

from tagifai_api.web.errors import NotFoundError


def lookup(document: dict, path: str, what: str):
    """The value at ``path`` (``class.mlops``) in ``document``, or a 404 naming the valid keys."""
    node = document
    walked: list[str] = []
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            valid = sorted(node) if isinstance(node, dict) else []
            where = ".".join(walked)
            choices = ", ".join(".".join([*walked, k]) for k in valid) or "none (a leaf value)"
            raise NotFoundError(
                f"Unknown {what} {path!r}. Valid {what}s{' under ' + repr(where) if where else ''}: {choices}.",
                data={"valid": [".".join([*walked, k]) for k in valid]},
            )
        node = node[key]
        walked.append(key)
    return node
