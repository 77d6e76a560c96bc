// Lets node load the SDK outside a component: the imports componentize-js provides
// (mailpush:driver/host, wasi:http) resolve to the stand-ins in host-stubs.mjs.
//   node --import ./test/register.mjs --test test/sdk.test.mjs
import { register } from 'node:module';

register('./host-stubs.mjs', import.meta.url);
