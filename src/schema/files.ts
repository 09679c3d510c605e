// The SQL this release ships: append-only migrations (sql/migrations/NNN_name.sql,
// tables and other state) and function files (sql/functions/NN_name.sql,
// CREATE OR REPLACE, re-applied whenever they change), each with its checksum.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const SQL_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../sql');

export interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

export interface FunctionFile {
  name: string;
  sql: string;
  checksum: string;
}

const sha256 = (text: string): string => createHash('sha256').update(text).digest('hex');

function read(dir: string, pattern: RegExp): { file: string; sql: string }[] {
  return readdirSync(path.join(SQL_DIR, dir))
    .filter((f) => pattern.test(f))
    .sort()
    .map((file) => ({ file, sql: readFileSync(path.join(SQL_DIR, dir, file), 'utf8') }));
}

let cache: { migrations: Migration[]; functions: FunctionFile[] } | undefined;

export function shipped(): { migrations: Migration[]; functions: FunctionFile[] } {
  cache ??= {
    migrations: read('migrations', /^\d{3}_[a-z0-9_]+\.sql$/).map(({ file, sql }) => ({
      version: Number(file.slice(0, 3)),
      name: file.slice(4, -4),
      sql,
      checksum: sha256(sql),
    })),
    functions: read('functions', /^\d{2}_[a-z0-9_]+\.sql$/).map(({ file, sql }) => ({ name: file.slice(0, -4), sql, checksum: sha256(sql) })),
  };
  return cache;
}
