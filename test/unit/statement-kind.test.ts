// How a step travels is decided by the parser: these are the cases users' steps hit.
import { beforeAll, describe, expect, it } from 'vitest';
import { loadParser, stepKind } from '../../src/engine/statement-kind.js';

beforeAll(async () => {
  await loadParser();
});

describe('stepKind', () => {
  it.each([
    ['INSERT INTO t VALUES (1)', true],
    ['WITH x AS (SELECT 1) UPDATE t SET a = 1 FROM x', true],
    ['DELETE FROM t WHERE a = 1', true],
    ['CREATE TABLE t2 (a int)', true],
    ['INSERT INTO t VALUES (1) RETURNING a', false],
    ['SELECT 1', false],
    ['CALL p()', false],
    ['EXPLAIN INSERT INTO t VALUES (1)', false],
    ['not sql at all', false],
  ])('%s returns no rows: %s', (sql, noRows) => {
    expect(stepKind(sql).noRows).toBe(noRows);
  });

  it.each([
    ['VACUUM t', true],
    ['CREATE INDEX CONCURRENTLY i ON t (a)', true],
    ['REINDEX TABLE CONCURRENTLY t', true],
    ['CREATE INDEX i ON t (a)', false],
    ['INSERT INTO t VALUES (1)', false],
    ['SELECT 1; SELECT 2', false],
  ])('%s needs its own transaction: %s', (sql, own) => {
    expect(stepKind(sql).ownTransaction).toBe(own);
  });

  it.each([
    ['INSERT INTO t (a, at) VALUES (1, now())', true],
    ['SELECT count(*), pg_catalog.max(a) FROM t', true],
    ["UPDATE t SET j = jsonb_build_object('k', lower(s))", true],
    ["SET search_path = 'x'", false],
    ["SELECT set_config('search_path', 'x', false)", false],
    ["SELECT set_config('standard_conforming_strings', 'off', false)", false], // substitution's quoting relies on it staying on
    ['SELECT my_function(a) FROM t', false],
    ['SELECT other_schema.count(a) FROM t', false],
    ['SELECT a INTO TEMP copy FROM t', false],
    ['CREATE TEMP TABLE x (a int)', false],
    ['SELECT pg_advisory_lock(1)', false],
    ["DO $$BEGIN PERFORM 1; END$$", false],
  ])('%s leaves no session state: %s', (sql, clean) => {
    expect(stepKind(sql).sessionClean).toBe(clean);
  });
});
