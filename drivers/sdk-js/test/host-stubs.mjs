// Module resolution hooks: `mailpush:…` and `wasi:…` imports become small stand-in
// modules. The host's HMAC is node's, so signatures can be checked against known values;
// wasi:http is never called by these tests (every export throws if it is).
import { createHmac } from 'node:crypto';

const HOST = `
import { createHmac } from 'node:crypto';
export const logged = [];
export function log(level, line) { logged.push([level, line]); }
export function metadataGet(_key) { return null; }
export function hmacSha256(key, data) {
  return new Uint8Array(createHmac('sha256', Buffer.from(key)).update(Buffer.from(data)).digest());
}
`;

const WASI_HTTP = `
const no = (name) => function () { throw new Error(name + ' is not available in the SDK tests'); };
export const handle = no('handle');
export const Fields = no('Fields');
export const OutgoingRequest = no('OutgoingRequest');
export const OutgoingBody = no('OutgoingBody');
export const IncomingBody = no('IncomingBody');
export const RequestOptions = no('RequestOptions');
`;

void createHmac; // the stand-in imports it itself

export async function resolve(specifier, context, next) {
  if (specifier.startsWith('mailpush:')) {
    return { url: `data:text/javascript,${encodeURIComponent(HOST)}`, shortCircuit: true };
  }
  if (specifier.startsWith('wasi:')) {
    return { url: `data:text/javascript,${encodeURIComponent(WASI_HTTP)}`, shortCircuit: true };
  }
  return next(specifier, context);
}
