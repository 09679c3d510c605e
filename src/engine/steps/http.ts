// Runs one HTTP step: the request the interpreter substituted, through the
// egress policy (src/http). HTTP steps are at-least-once: a crash after the
// request and before its checkpoint makes it again, with the same
// Idempotency-Key (instance, node, loop iteration), so a server that honours
// the header can tell a repeat from a new request.
import { buildMultipart, displayUrl, HttpFailed, HttpRefused, httpRequest, statusMessage, withoutContentType, type HttpPolicy } from '../../http/index.js';
import type { HttpOutcome } from '../events.js';
import type { HttpStepRequest } from '../interpreter.js';
import { StepError } from '../substitute.js';

/** The Idempotency-Key of a node's iteration: `<instance>-<node>-<iteration>` (nested loops: `2.5`; outside loops: `0`). */
export function idempotencyKey(instanceId: string, nodeId: string, stamp: string): string {
  const iteration = stamp === '' ? '0' : stamp.split('/').filter(Boolean).join('.');
  return `${instanceId}-${nodeId}-${iteration}`;
}

/** The URL as messages show it (no userinfo); text that is no URL as it is. */
function displayUrlText(url: string): string {
  try {
    return displayUrl(new URL(url));
  } catch {
    return url;
  }
}

/** Makes the request; the response envelope as JSON (pg_durable's field order). Throws StepError for a refused or failed request and for 5xx. */
export async function runHttpStep(
  req: HttpStepRequest,
  key: string,
  policy: HttpPolicy,
  signal: AbortSignal,
  report: (outcome: HttpOutcome) => void = () => {},
): Promise<string> {
  let headers: Record<string, string> = { ...req.headers };
  let body: Buffer | string | null = req.body;
  if (req.parts !== null) {
    try {
      const built = buildMultipart(req.parts);
      // The boundary is ours: a Content-Type the caller set would not match it.
      headers = { ...withoutContentType(headers), 'Content-Type': built.contentType };
      body = built.body;
    } catch (err) {
      throw new StepError((err as Error).message);
    }
  }
  // The caller's own key, if it sets one, is kept.
  if (!Object.keys(headers).some((h) => h.toLowerCase() === 'idempotency-key')) headers['Idempotency-Key'] = key;
  let envelope;
  try {
    envelope = await httpRequest({ url: req.url, method: req.method, headers, body }, policy, { timeoutMs: req.timeoutSeconds * 1000, signal });
  } catch (err) {
    if (signal.aborted) throw err;
    if (err instanceof HttpRefused) {
      report('refused');
      throw new StepError(`HTTP ${req.method} ${displayUrlText(req.url)} refused: ${err.message}`);
    }
    report('failed');
    if (err instanceof HttpFailed) throw new StepError(err.message);
    // Anything else the request threw is still this step's (a URL Node refuses, say): were it
    // taken for the infrastructure's, the instance would retry for ever, holding its slot.
    throw new StepError(`HTTP ${req.method} ${displayUrlText(req.url)} failed: ${(err as Error).message}`);
  }
  report(envelope.status >= 500 ? 'server_error' : envelope.status >= 400 ? 'client_error' : 'success');
  if (envelope.status >= 500) throw new StepError(statusMessage(req.method, displayUrlText(req.url), envelope));
  let { body: text, encoding } = envelope;
  // jsonb (where results are stored) cannot hold NUL: such a text body is kept as base64.
  if (encoding === 'text' && text.includes('\u0000')) [text, encoding] = [Buffer.from(text, 'utf8').toString('base64'), 'base64'];
  const { status, headers: h, ok, duration_ms } = envelope;
  return JSON.stringify({ status, body: text, encoding, headers: h, ok, duration_ms });
}
