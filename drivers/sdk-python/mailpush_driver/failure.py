"""Failures of a delivery: raise (or return) one from a handler."""

from __future__ import annotations

from typing import Optional


class _RetryableCtor:
    """``Failure.retryable(reason, retry_after_ms=…)`` builds a retryable failure (as in the
    Rust SDK); on an instance, ``f.retryable`` is the bool (the instance attribute wins,
    this descriptor has no ``__set__``)."""

    def __get__(self, obj, cls):
        return lambda reason, retry_after_ms=None: RetryableFailure(reason, retry_after_ms)


class Failure(Exception):
    """A failed delivery: why, and whether a retry may help. Maps to the WIT ``failure``."""

    retryable = _RetryableCtor()

    def __init__(self, reason: str, retryable: bool = False, retry_after_ms: Optional[int] = None):
        super().__init__(reason)
        self.reason = str(reason)
        self.retryable = bool(retryable)
        self.retry_after_ms = None if retry_after_ms is None else max(0, int(retry_after_ms))

    @classmethod
    def permanent(cls, reason: str) -> "Failure":
        """A failure no retry will fix (bad request, bad data, policy refusal)."""
        return PermanentFailure(reason)

    def to_wit(self):
        """The WIT ``failure`` record (``wit_world.imports.mailpush_driver_types.Failure``)."""
        from wit_world.imports.mailpush_driver_types import Failure as WitFailure
        return WitFailure(reason=self.reason, retryable=self.retryable, retry_after_ms=self.retry_after_ms)

    def __repr__(self) -> str:
        kind = "retryable" if self.retryable else "permanent"
        extra = f", retry_after_ms={self.retry_after_ms}" if self.retry_after_ms is not None else ""
        return f"Failure({kind}: {self.reason!r}{extra})"


class RetryableFailure(Failure):
    """A failure that a retry may fix (timeouts, 5xx, …)."""

    def __init__(self, reason: str, retry_after_ms: Optional[int] = None):
        super().__init__(reason, True, retry_after_ms)


class PermanentFailure(Failure):
    """A failure no retry will fix."""

    def __init__(self, reason: str):
        super().__init__(reason, False, None)
