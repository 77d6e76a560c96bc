"""Failures of a delivery: raise (or return) one from a handler."""

from __future__ import annotations

from typing import Optional

#: The largest value of a WIT u64 (a delay in milliseconds past it is capped to it).
U64_MAX = 2**64 - 1


def _ms(value) -> Optional[int]:
    """A delay in milliseconds as a WIT u64: None when it is not a number, negative is 0,
    more than a u64 holds (infinity too) is its maximum."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return min(max(0, value), U64_MAX)
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if f != f:  # NaN
        return None
    if f >= U64_MAX:
        return U64_MAX
    if f <= 0:
        return 0
    return round(f)


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
        self.retry_after_ms = _ms(retry_after_ms)

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
