"""Resetting per-process state in a forked child."""

from __future__ import annotations

import gc
import os
import sys
import weakref

import pytest

from tagifai_api.serving.forks import reset_after_fork


class Holder:
    def __init__(self) -> None:
        self.resets = 0
        reset_after_fork(self._reset)

    def _reset(self) -> None:
        self.resets += 1


def in_child(check) -> bool:
    """Run ``check`` in a forked child; whether it returned true."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, b"1" if check() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_child_resets_and_the_parent_does_not():
    holder = Holder()
    assert in_child(lambda: holder.resets == 1)
    assert holder.resets == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_hook_keeps_nothing_alive_and_outlives_its_object(monkeypatch):
    holder = Holder()
    gone = weakref.ref(holder)
    del holder
    gc.collect()
    assert gone() is None
    failures = []  # a failing fork hook is reported here, in the child, and the fork goes on
    monkeypatch.setattr(sys, "unraisablehook", failures.append)
    assert in_child(lambda: failures == [])
