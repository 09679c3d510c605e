// What the engine tells the rest of the proxy as it works: the metrics and
// the console listen; the engine knows nothing of either. Events carry ids
// and kinds, never user data (no SQL text, no values).
import { EventEmitter } from 'node:events';

export type StepKind = 'sql' | 'http';
export type HttpOutcome = 'success' | 'client_error' | 'server_error' | 'refused' | 'failed';

export interface EngineEventMap {
  /** Runs claimed by one claim statement; `takeovers` of them were held by an executor whose lease expired. */
  claimed: [{ database: string; instances: number; takeovers: number }];
  /** A new instance was picked up for the first time (it was pending). */
  started: [{ database: string; instance: string }];
  /** An instance's first step began: the time since its df.start committed (created_at). */
  firstStep: [{ database: string; instance: string; latencyMs: number }];
  /** A step ended. */
  step: [{ database: string; kind: StepKind; ok: boolean; ms: number }];
  /** An HTTP step's request ended so. */
  http: [{ database: string; outcome: HttpOutcome }];
  /** A signal wait took a kept signal. */
  signalTaken: [{ database: string; instance: string }];
  /** Something of the instance changed (a node's status, its run parked): what a live view redraws on. */
  changed: [{ database: string; instance: string }];
  /** An instance ended, seen by this executor. */
  ended: [{ database: string; instance: string; status: 'completed' | 'failed' | 'cancelled' }];
  /** Retention removed finished instances. */
  pruned: [{ database: string; instances: number }];
}

export class EngineEvents extends EventEmitter<EngineEventMap> {}
