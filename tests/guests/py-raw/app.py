"""A Python driver written without mailpush's SDK: an uncaught exception in deliver (the
failure must carry its message), and print() output."""

from wit_world import exports
from wit_world.imports import mailpush_driver_types as types


class Driver(exports.Driver):
    def init(self, args):
        return None

    def begin_txn(self, id, user):
        return types.Begin_Events([types.EventName.MAILBOX_CREATE, types.EventName.MESSAGE_NEW])

    def deliver(self, txn):
        print(f"print: {txn.id}")
        raise ValueError(f"boom in deliver for {txn.user}")
