"""mailpush driver SDK for Python (componentize-py).

Write a driver as a module that defines a class and exports it as ``Driver``::

    from mailpush_driver import DriverBase, export, log, Failure

    class Hello(DriverBase):
        def __init__(self, args):
            self.greeting = args.get("greeting", "hello")
        def on_message_new(self, txn, m, json):
            log.info(f"{self.greeting} {txn.user}: new mail in {m.message.mailbox}")

    Driver = export(Hello)

Build it (``app.py`` in the current directory, the SDK in ``<sdk dir>``) with
``componentize-py -d <sdk dir>/wit -w push-driver componentize -p . -p <sdk dir> app -o driver.wasm``.

How outcomes reach mailpush (componentize-py maps a WIT ``result<_, E>`` error to raising
``componentize_py_types.Err(E)``; ``export`` does that for you):

- ``__init__`` raising ``InitError``/``ValueError``/``KeyError`` (or any ``Exception``) →
  ``init`` returns ``err(str(exception))``: the configuration is refused.
- ``on_transaction``/``on_*`` raising ``Failure`` (or returning one) → ``deliver`` returns
  ``err(failure)``; an uncaught ``HttpError`` becomes ``failure_from_http("request", e)``.
- any other exception → logged (with its traceback) at error level, then re-raised: the
  call traps, like a Rust panic, and mailpush records a trap as a permanent failure: the
  transaction is dead-lettered at once, not retried. Catch what a retry could fix and
  raise ``Failure.retryable`` instead.

A driver whose ``wants`` never depends on the transaction can say so once (mailpush:driver
0.1.1): override ``fixed_wants``, add ``FixedBegin = export_fixed_begin(Driver)`` and build
with ``-w push-driver-fixed-begin``; mailpush then stops calling ``begin-txn``.
"""

from __future__ import annotations

import traceback
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from componentize_py_types import Err
from wit_world import exports as _exports
from wit_world.imports import host as _host
from wit_world.imports import mailpush_driver_types as types

# The generated WIT types (records and variants as dataclasses), re-exported.
from wit_world.imports.mailpush_driver_types import (  # noqa: F401
    Event, EventName, EventRecord, FlagsClear, FlagsSet, MailboxRename, MessageRef, NewMessage,
    Transaction,
    Event_MessageNew, Event_MessageAppend, Event_MessageExpunge, Event_MessageRead,
    Event_MessageTrash, Event_FlagsSet, Event_FlagsClear, Event_MailboxCreate,
    Event_MailboxDelete, Event_MailboxRename, Event_MailboxSubscribe, Event_MailboxUnsubscribe,
)

from .failure import Failure, RetryableFailure, PermanentFailure  # noqa: F401
from . import http  # noqa: F401
from .http import HttpError, Response, failure_from_http, parse_retry_after  # noqa: F401
from .webhooks import (  # noqa: F401
    sign_webhook, decode_webhook_secret, hmac_sha256, MAX_HMAC_KEY_BYTES,
)

__all__ = [
    "DriverBase", "export", "export_fixed_begin", "Args", "TxnInfo", "InitError", "log",
    "metadata", "ALL_EVENTS", "Failure", "RetryableFailure", "PermanentFailure", "http",
    "HttpError", "Response", "failure_from_http", "parse_retry_after", "sign_webhook",
    "decode_webhook_secret", "hmac_sha256", "MAX_HMAC_KEY_BYTES", "types", "Transaction",
    "EventName", "NewMessage", "MessageRef", "FlagsSet", "FlagsClear", "MailboxRename",
    "EventRecord", "Event",
    "Event_MessageNew", "Event_MessageAppend", "Event_MessageExpunge", "Event_MessageRead",
    "Event_MessageTrash", "Event_FlagsSet", "Event_FlagsClear", "Event_MailboxCreate",
    "Event_MailboxDelete", "Event_MailboxRename", "Event_MailboxSubscribe",
    "Event_MailboxUnsubscribe",
]

ALL_EVENTS: List[EventName] = list(EventName)


# ---------------------------------------------------------------- logging, METADATA

class _Log:
    """Logging through the host (tagged by mailpush with driver number, name and txn id)."""

    @staticmethod
    def trace(msg: str) -> None:
        _host.log(_host.Level.TRACE, str(msg))

    @staticmethod
    def debug(msg: str) -> None:
        _host.log(_host.Level.DEBUG, str(msg))

    @staticmethod
    def info(msg: str) -> None:
        _host.log(_host.Level.INFO, str(msg))

    @staticmethod
    def warn(msg: str) -> None:
        _host.log(_host.Level.WARN, str(msg))

    warning = warn

    @staticmethod
    def error(msg: str) -> None:
        _host.log(_host.Level.ERROR, str(msg))


log = _Log()


def metadata(key: str) -> Optional[str]:
    """A METADATA entry of the current transaction's user (read-only), or None."""
    return _host.metadata_get(key)


# ---------------------------------------------------------------- args, driver base

class InitError(Exception):
    """Raise from ``__init__`` to refuse the configuration with this message."""


class Args:
    """The driver's config-line arguments (mailpush's sandbox keys removed)."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]):
        self.pairs = list(pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of ``key`` (``""`` for a bare flag), the last one when repeated."""
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def require(self, key: str) -> str:
        """The value of a required key; raises the init error naming it."""
        v = self.get(key)
        if not v:
            raise InitError(f"missing required argument {key}=…")
        return v

    def __iter__(self):
        return iter(self.pairs)


class TxnInfo:
    """The transaction being handled."""

    __slots__ = ("id", "user")

    def __init__(self, id: str, user: str):
        self.id = id
        self.user = user


Wants = Union[str, Iterable[EventName], None]


class DriverBase:
    """A push driver. Override ``__init__(self, args)`` and the handlers you need, or
    ``on_transaction`` to see the whole transaction at once."""

    def __init__(self, args: Args):
        pass

    def wants(self, txn: TxnInfo) -> Wants:
        """Dovecot's begin_txn: ``"all"``, ``"skip"``, or a list of EventName. The default is
        ``fixed_wants()`` when it answers (also for a component built without the
        ``FixedBegin`` export), else ``"all"``. Returning ``None`` is ``"all"``, with a
        warning; any other value is logged and traps."""
        fixed = self.fixed_wants()
        return "all" if fixed is None else fixed

    def fixed_wants(self) -> Wants:
        """The answer to every transaction's ``wants`` when it never depends on the
        transaction: asked once, at load, after ``__init__``, through the
        ``FixedBegin`` export (``export_fixed_begin``); then ``wants`` is not called.
        ``None`` (default) keeps ``wants`` called per transaction."""
        return None

    def on_transaction(self, txn: Transaction) -> Optional[Failure]:
        """The whole transaction (only wanted events). The default calls the ``on_*``
        method of each event in order, stopping at the first failure."""
        info = TxnInfo(txn.id, txn.user)
        for rec in txn.events:
            name = _HANDLERS.get(type(rec.event))
            if name:
                r = getattr(self, name)(info, rec.event.value, rec.json)
                if isinstance(r, Failure):
                    return r
        return None

    def on_message_new(self, txn: TxnInfo, m: NewMessage, json: str): pass
    def on_message_append(self, txn: TxnInfo, m: NewMessage, json: str): pass
    def on_message_expunge(self, txn: TxnInfo, m: MessageRef, json: str): pass
    def on_message_read(self, txn: TxnInfo, m: MessageRef, json: str): pass
    def on_message_trash(self, txn: TxnInfo, m: MessageRef, json: str): pass
    def on_flags_set(self, txn: TxnInfo, f: FlagsSet, json: str): pass
    def on_flags_clear(self, txn: TxnInfo, f: FlagsClear, json: str): pass
    def on_mailbox_create(self, txn: TxnInfo, mailbox: str, json: str): pass
    def on_mailbox_delete(self, txn: TxnInfo, mailbox: str, json: str): pass
    def on_mailbox_rename(self, txn: TxnInfo, r: MailboxRename, json: str): pass
    def on_mailbox_subscribe(self, txn: TxnInfo, mailbox: str, json: str): pass
    def on_mailbox_unsubscribe(self, txn: TxnInfo, mailbox: str, json: str): pass


_HANDLERS = {
    Event_MessageNew: "on_message_new", Event_MessageAppend: "on_message_append",
    Event_MessageExpunge: "on_message_expunge", Event_MessageRead: "on_message_read",
    Event_MessageTrash: "on_message_trash", Event_FlagsSet: "on_flags_set",
    Event_FlagsClear: "on_flags_clear", Event_MailboxCreate: "on_mailbox_create",
    Event_MailboxDelete: "on_mailbox_delete", Event_MailboxRename: "on_mailbox_rename",
    Event_MailboxSubscribe: "on_mailbox_subscribe", Event_MailboxUnsubscribe: "on_mailbox_unsubscribe",
}


# ---------------------------------------------------------------- the export

def _uncaught(where: str, e: BaseException) -> None:
    # Like a Rust panic: the message goes to the host's log, then the call traps.
    log.error(f"uncaught exception in {where}: {type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e)))


def _failed(f: Failure) -> None:
    after = "" if f.retry_after_ms is None else f", retry after {f.retry_after_ms} ms"
    log.debug(f"deliver failed: {f.reason} ({'retryable' if f.retryable else 'permanent'}{after})")
    raise Err(f.to_wit())


def export(driver_class: type) -> type:
    """The class componentize-py exports as ``mailpush:driver/driver``: assign it to
    ``Driver`` in your app module (``Driver = export(MyDriver)``)."""

    state = {"driver": None}

    class Driver(_exports.Driver):
        def init(self, args: List[Tuple[str, str]]) -> None:
            try:
                state["driver"] = driver_class(Args(args))
            except Exception as e:  # every exception refuses the configuration
                msg = e.args[0] if isinstance(e, KeyError) and e.args else e
                raise Err(str(msg) or type(e).__name__)

        def begin_txn(self, id: str, user: str) -> types.Begin:
            d = state["driver"]
            if d is None:
                return types.Begin_Skip()
            try:
                w = d.wants(TxnInfo(id, user))
                if w is None:
                    # A path without `return`: every event, never a silent skip.
                    log.warn("wants returned None: every event is delivered (return 'all', 'skip' or a list)")
                    w = "all"
                return _begin_of(w, "wants")
            except Exception as e:
                _uncaught("wants", e)
                raise

        def deliver(self, txn: types.Transaction) -> None:
            d = state["driver"]
            if d is None:
                raise Err(Failure.permanent("driver not initialised").to_wit())
            try:
                r = d.on_transaction(txn)
            except Failure as f:
                _failed(f)
            except HttpError as e:
                _failed(failure_from_http("request", e))
            except Err:
                raise
            except Exception as e:
                _uncaught("deliver", e)
                raise
            if isinstance(r, Failure):
                _failed(r)

    Driver.__name__ = Driver.__qualname__ = "Driver"
    Driver._mailpush_state = state
    return Driver


def _begin_of(w: Wants, where: str) -> types.Begin:
    """The WIT ``begin`` of a ``wants``/``fixed_wants`` answer; another shape raises
    TypeError (a bug in the driver: the caller logs it and the call traps)."""
    if isinstance(w, str) and w == "skip" or w is False:
        return types.Begin_Skip()
    if isinstance(w, str) and w == "all" or w is True:
        return types.Begin_Events(list(ALL_EVENTS))
    expected = "expected 'all', 'skip' or a list of EventName"
    if isinstance(w, (str, bytes)) or w is None or not hasattr(w, "__iter__"):
        raise TypeError(f"{where} returned {w!r}: {expected}")
    names = list(w)
    for n in names:
        if not isinstance(n, EventName):
            raise TypeError(f"{where} returned a list with {n!r}: {expected}")
    return types.Begin_Events(names)


def export_fixed_begin(driver_export: type) -> type:
    """The class componentize-py exports as ``mailpush:driver/fixed-begin`` (world
    ``push-driver-fixed-begin``, mailpush:driver 0.1.1): assign it to ``FixedBegin`` in
    your app module (``FixedBegin = export_fixed_begin(Driver)``, ``Driver`` being what
    ``export`` returned). mailpush asks it once, at load: the driver's ``fixed_wants()``."""
    base = getattr(_exports, "FixedBegin", None)
    if base is None:
        raise TypeError("export_fixed_begin: build with -w push-driver-fixed-begin")
    state = driver_export._mailpush_state

    class FixedBegin(base):
        def answer(self) -> Optional[types.Begin]:
            d = state["driver"]
            if d is None:
                return None
            try:
                w = d.fixed_wants()
                return None if w is None else _begin_of(w, "fixed_wants")
            except Exception as e:
                _uncaught("fixed_wants", e)
                raise

    FixedBegin.__name__ = FixedBegin.__qualname__ = "FixedBegin"
    return FixedBegin
