// HTTP steps' outside-world side: egress policy, requests, envelopes, multipart bodies.
export {
  defaultLookup,
  displayUrl,
  HttpRefused,
  parseAllowList,
  resolveTarget,
  specialRange,
  urlPort,
  type AllowEntry,
  type AllowList,
  type LookupFn,
  type RefusalRule,
  type ResolvedAddress,
  type Target,
} from './policy.js';
export {
  DEFAULT_USER_AGENT,
  HTTP_DEFAULTS,
  HttpFailed,
  httpRequest,
  MAX_RESPONSE_HEADER_BYTES,
  type HttpFailureCode,
  type HttpPolicy,
  type HttpRequest,
  type HttpRequestOptions,
} from './request.js';
export { encodeBody, errorPreview, PREVIEW_BYTES, statusMessage, type BodyEncoding, type HttpEnvelope } from './envelope.js';
export { buildMultipart, decodeBase64, withoutContentType, type MultipartPart } from './multipart.js';
