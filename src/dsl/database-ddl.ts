// Statements PostgreSQL refuses while anyone is connected to the database
// they name: DROP DATABASE, ALTER DATABASE ... RENAME, and CREATE DATABASE
// ... TEMPLATE (the template). The executor holds connections to every
// database it serves, so the proxy lets go of these first; otherwise a test
// suite that creates, copies and drops its databases through the proxy would fail.
import { parseSync } from 'libpg-query';

type Ast = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** The databases `sql` needs nobody connected to; empty for every other statement. */
export function databasesToRelease(sql: string): string[] {
  let stmts: { stmt?: Ast }[];
  try {
    stmts = (parseSync(sql) as { stmts?: { stmt?: Ast }[] }).stmts ?? [];
  } catch {
    return []; // the server reports its own syntax errors
  }
  const out: string[] = [];
  for (const { stmt } of stmts) {
    if (!stmt) continue;
    if (stmt.DropdbStmt) out.push(String(stmt.DropdbStmt.dbname));
    else if (stmt.RenameStmt?.renameType === 'OBJECT_DATABASE' && typeof stmt.RenameStmt.subname === 'string') out.push(stmt.RenameStmt.subname);
    else if (stmt.CreatedbStmt) {
      for (const o of (stmt.CreatedbStmt.options ?? []) as Ast[]) {
        const d = o.DefElem;
        if (d?.defname !== 'template') continue;
        const v = d.arg?.String?.sval ?? d.arg?.TypeName?.names?.[0]?.String?.sval;
        if (typeof v === 'string') out.push(v);
      }
    }
  }
  return out;
}
