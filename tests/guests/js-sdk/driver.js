// A JavaScript driver on mailpush's SDK whose deliver throws an Error it does not catch:
// the SDK logs the exception (message and stack) before the call traps, so the failure's
// reason carries the message.
import { defineDriver, log } from '../../../drivers/sdk-js/index.js';

export const driver = defineDriver({
  init(args) {},
  deliver(txn) {
    log.info(`about to fail on ${txn.id}`);
    throw new Error(`boom in deliver for ${txn.user}`);
  },
});
