"""The SDK's own logic, run by CPython without building a component:

    python3 -m unittest discover -s tests        (in drivers/sdk-python)

The modules componentize-py generates (``wit_world``, ``componentize_py_types``) are
stood in for by small fakes; wasi:http is never called. tests/tests/languages.rs runs this
wherever the Python toolchain is installed.
"""

import enum
import os
import sys
import types as _types
import unittest
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------- the stand-ins

logged = []


def _module(name, **attrs):
    m = _types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


class Err(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


class EventName(enum.Enum):
    MESSAGE_NEW = 0
    MESSAGE_APPEND = 1
    FLAGS_SET = 2


@dataclass
class Begin_Skip:
    pass


@dataclass
class Begin_Events:
    value: Any


@dataclass
class WitFailure:
    reason: str
    retryable: bool
    retry_after_ms: Any


class _Level:
    TRACE, DEBUG, INFO, WARN, ERROR = "trace", "debug", "info", "warn", "error"


_event_types = {n: type(n, (), {}) for n in (
    "Event", "EventRecord", "FlagsClear", "FlagsSet", "MailboxRename", "MessageRef", "NewMessage",
    "Transaction", "Event_MessageNew", "Event_MessageAppend", "Event_MessageExpunge",
    "Event_MessageRead", "Event_MessageTrash", "Event_FlagsSet", "Event_FlagsClear",
    "Event_MailboxCreate", "Event_MailboxDelete", "Event_MailboxRename", "Event_MailboxSubscribe",
    "Event_MailboxUnsubscribe")}

_module("componentize_py_types", Ok=type("Ok", (), {}), Err=Err)
_module("wit_world")
_module("wit_world.exports", Driver=type("Driver", (), {}), FixedBegin=type("FixedBegin", (), {}))
_module("wit_world.imports")
_module("wit_world.imports.host", Level=_Level,
        log=lambda level, line: logged.append((level, line)),
        metadata_get=lambda key: None, hmac_sha256=lambda k, d: b"")
_module("wit_world.imports.mailpush_driver_types", EventName=EventName, Begin_Skip=Begin_Skip,
        Begin_Events=Begin_Events, Failure=WitFailure, **_event_types)
_module("wit_world.imports.outgoing_handler")
_module("wit_world.imports.wasi_http_types", **{f"Method_{m}": type(m, (), {}) for m in (
    "Get", "Head", "Post", "Put", "Delete", "Connect", "Options", "Trace", "Patch", "Other")})
_module("wit_world.imports.streams", StreamError_Closed=type("C", (), {}),
        StreamError_LastOperationFailed=type("L", (), {}))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.dont_write_bytecode = True

import mailpush_driver as sdk  # noqa: E402
from mailpush_driver import DriverBase, Failure, export, export_fixed_begin  # noqa: E402
from mailpush_driver.http import parse_retry_after  # noqa: E402
from mailpush_driver.webhooks import decode_webhook_secret  # noqa: E402

U64_MAX = 2**64 - 1
ALL = Begin_Events(list(EventName))


def driver(cls, args=()):
    d = export(cls)()
    d.init(list(args))
    return d


# ---------------------------------------------------------------- the tests

class Wants(unittest.TestCase):
    def test_none_is_every_event_with_a_warning(self):
        class NoReturn(DriverBase):
            def wants(self, txn):
                pass
        logged.clear()
        self.assertEqual(driver(NoReturn).begin_txn("t", "u"), ALL)
        self.assertTrue(any(level == "warn" and "wants returned None" in line for level, line in logged))

    def test_a_fixed_answer_holds_without_the_fixed_begin_export(self):
        class Fixed(DriverBase):
            def fixed_wants(self):
                return [EventName.MESSAGE_NEW]
        self.assertEqual(driver(Fixed).begin_txn("t", "u"), Begin_Events([EventName.MESSAGE_NEW]))
        class FixedSkip(DriverBase):
            def fixed_wants(self):
                return "skip"
        self.assertEqual(driver(FixedSkip).begin_txn("t", "u"), Begin_Skip())
        self.assertEqual(driver(DriverBase).begin_txn("t", "u"), ALL)

    def test_other_shapes_are_logged_and_trap(self):
        for bad in ["message-new", 7, [EventName.MESSAGE_NEW, "flags-set"]]:
            class Bad(DriverBase):
                def wants(self, txn, bad=bad):
                    return bad
            logged.clear()
            with self.assertRaises(TypeError, msg=repr(bad)):
                driver(Bad).begin_txn("t", "u")
            self.assertTrue(any(level == "error" and "wants returned" in line for level, line in logged))

    def test_fixed_begin_answers(self):
        class Fixed(DriverBase):
            def fixed_wants(self):
                return "all"
        exported = export(Fixed)
        d = exported()
        d.init([])
        self.assertEqual(export_fixed_begin(exported)().answer(), ALL)
        self.assertIsNone(export_fixed_begin(export(DriverBase))().answer())


class RetryAfter(unittest.TestCase):
    def test_delays_are_u64_milliseconds(self):
        self.assertEqual(Failure.retryable("x", retry_after_ms=10**30).retry_after_ms, U64_MAX)
        self.assertEqual(Failure.retryable("x", retry_after_ms=float("inf")).retry_after_ms, U64_MAX)
        self.assertEqual(Failure.retryable("x", retry_after_ms=-5).retry_after_ms, 0)
        self.assertEqual(Failure.retryable("x", retry_after_ms=float("-inf")).retry_after_ms, 0)
        self.assertIsNone(Failure.retryable("x", retry_after_ms="").retry_after_ms)
        self.assertIsNone(Failure.retryable("x", retry_after_ms="soon").retry_after_ms)
        self.assertIsNone(Failure.retryable("x", retry_after_ms=float("nan")).retry_after_ms)

    def test_a_huge_retry_after_reaches_deliver_as_a_retryable_failure(self):
        class Busy(DriverBase):
            def on_transaction(self, txn):
                return Failure.retryable("busy", retry_after_ms=parse_retry_after("99999999999999999"))
        with self.assertRaises(Err) as e:
            driver(Busy).deliver(object())
        self.assertEqual((e.exception.value.retryable, e.exception.value.retry_after_ms), (True, U64_MAX))

    def test_parse(self):
        self.assertEqual(parse_retry_after("7"), 7000)
        self.assertIsNone(parse_retry_after("9" * 400))
        self.assertIsNone(parse_retry_after("18446744073709551616"))
        self.assertIsNone(parse_retry_after("\u00b2"))  # a digit to str.isdigit, not ASCII
        self.assertIsNone(parse_retry_after("-1"))
        self.assertEqual(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420.0), 60000)


class Secrets(unittest.TestCase):
    def test_padded_canonical_base64_and_a_key(self):
        for bad in ["whsec_abc", "whsec_YR==", "whsec_YQ", "whsec_", "secret"]:
            with self.assertRaises(ValueError, msg=bad):
                decode_webhook_secret(bad)
        self.assertEqual(decode_webhook_secret("whsec_YQ=="), b"a")


if __name__ == "__main__":
    unittest.main()
