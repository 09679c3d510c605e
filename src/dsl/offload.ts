// Compiling large statements off the event loop: one worker thread
// (compile-worker.ts) takes them in turn. Where the worker cannot run (its
// file is missing, as when the sources run untranspiled, or it died) the
// caller compiles in line instead.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DslError } from './builders.js';
import type { Rewritten } from './interceptor.js';

export interface CompileRequest {
  id: number;
  sql: string;
}

/** Rewritten as it crosses threads: the DslError as its fields. */
export type WireRewritten = Omit<Rewritten, 'error'> & { error?: { message: string; code: string; at?: number; hint?: string } };

export type CompileReply = { id: number; result: WireRewritten | undefined } | { id: number; failed: string };

export function toWire(r: Rewritten | undefined): WireRewritten | undefined {
  if (!r?.error) return r as WireRewritten | undefined;
  const { message, code, at, hint } = r.error;
  return { ...r, error: { message, code, ...(at !== undefined ? { at } : {}), ...(hint !== undefined ? { hint } : {}) } };
}

function fromWire(r: WireRewritten | undefined): Rewritten | undefined {
  if (!r?.error) return r as Rewritten | undefined;
  return { ...r, error: new DslError(r.error.message, r.error.code, r.error.at, r.error.hint) };
}

/** The compiler failed on this statement (a bug): the caller forwards it unchanged, as in line. */
export class CompileFailed extends Error {}

export class CompileWorker {
  private worker: Worker | undefined;
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (r: Rewritten | undefined) => void; reject: (e: Error) => void }>();

  private constructor(private readonly file: URL) {}

  /** A worker from `file`, or undefined when there is no such file. */
  static at(file: URL): CompileWorker | undefined {
    return existsSync(fileURLToPath(file)) ? new CompileWorker(file) : undefined;
  }

  rewrite(sql: string): Promise<Rewritten | undefined> {
    const w = this.started();
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, sql } satisfies CompileRequest);
    });
  }

  private started(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(this.file);
    w.unref(); // an idle compiler does not keep the process alive
    w.on('message', (m: CompileReply) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if ('failed' in m) p.reject(new CompileFailed(m.failed));
      else p.resolve(fromWire(m.result));
    });
    const gone = (err: Error): void => {
      if (this.worker !== w) return;
      this.worker = undefined; // the next statement starts a new one
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    w.on('error', gone);
    w.on('exit', (code) => gone(new Error(`the compile worker exited (${code})`)));
    this.worker = w;
    return w;
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    await w?.terminate();
  }
}
