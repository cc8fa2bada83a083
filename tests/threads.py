"""Helpers for tests that hold one thread's work open and check what other threads can do meanwhile."""
from __future__ import annotations

import threading
from concurrent.futures import Future

WAIT = 180  # seconds: only ever reached when the code under test deadlocks (or a busy machine embeds slowly)


def run_in_thread(fn, *args):
    """Start ``fn`` in a thread; the returned dict gets its "value" or "error", and "done" when it ended."""
    box = {"done": threading.Event()}

    def target():
        try:
            box["value"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the test's assertions
            box["error"] = exc
        finally:
            box["done"].set()

    threading.Thread(target=target, daemon=True).start()
    return box


def hold(entered: threading.Event, release: threading.Event, what: str) -> None:
    """Called from the work a test holds open: say it has arrived, then wait until the test releases it."""
    entered.set()
    assert release.wait(WAIT), f"the held {what} was never released"


def waiting_on(future: Future) -> threading.Event:
    """Set when some thread starts waiting for ``future`` (a load or open already under way)."""
    waiting, result = threading.Event(), future.result

    def waited(timeout=None):
        waiting.set()
        return result(timeout)

    future.result = waited
    return waiting
