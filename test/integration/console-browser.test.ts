// The web console in a real browser (Debian's chromium, driven by
// playwright-core): sign in as a role, see only its instances, watch a
// running workflow's nodes change colour without reloading, cancel one,
// signal one, and keep a screenshot of the graph page (test-output/console.png;
// UPDATE_SCREENSHOT=1 writes the README's docs/console.png instead).
// CI installs /usr/bin/chromium; without it this suite fails, it does not skip.
import { existsSync } from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { chromium, type Browser, type Page } from 'playwright-core';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Console } from '../../src/admin/console/index.js';
import { AdminServer } from '../../src/admin/server.js';
import { connectionTargets } from '../../src/engine/targets.js';
import { createRoles, dbUrl, startDurable, stepLogin, type Durable } from '../helpers/durable.js';
import { env } from '../helpers/proxy.js';

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOT = path.resolve(import.meta.dirname, process.env.UPDATE_SCREENSHOT ? '../../docs/console.png' : '../../test-output/console.png');
const CAROL = 'pgdp_console_carol';
const DAVE = 'pgdp_console_dave';

let d: Durable;
let admin: AdminServer;
let con: Console;
let base: string;
let browser: Browser;
let page: Page;
let carol: pg.Client;
let dave: pg.Client;
/** What the page reported as wrong: script errors, refused loads (the Content-Security-Policy). */
const problems: string[] = [];

async function start(c: pg.Client, fut: string, label: string): Promise<string> {
  return (await c.query<{ id: string }>(`SELECT df.start(${fut}, $1) AS id`, [label])).rows[0]!.id;
}

/** A node of the graph on the page, by its type and (part of) its text. */
const node = (type: string, text: string, status?: string): string =>
  `svg#graph g.node[data-type="${type}"][data-title*="${text}"]${status ? `[data-status="${status}"]` : ''}`;

async function open(id: string): Promise<void> {
  await page.goto(`${base}/console/#/instances/${id}`);
  await page.waitForSelector('svg#graph g.node');
  await page.waitForSelector('#live[data-state="live"]');
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the console's browser test needs Debian's chromium (apt-get install chromium; .ci/run installs it)`);
  }
  d = await startDurable('pgdp_console_browser');
  await createRoles([CAROL, DAVE]);
  const su = await d.connect();
  for (const r of [CAROL, DAVE]) await su.query(`SELECT df.grant_usage('${r}')`);
  con = new Console({
    upstreamUrl: dbUrl(env().adminUrl, d.database),
    control: connectionTargets(dbUrl(env().executorUrl, d.database), stepLogin()).control,
    defaultDatabase: d.database,
    events: d.executor.events,
    log: pino({ level: 'silent' }),
  });
  admin = new AdminServer({ host: '127.0.0.1', port: 0, stats: d.proxy.stats, probeUrl: env().adminUrl, log: pino({ level: 'silent' }), handlers: [con.handler] });
  const a = await admin.listen();
  base = `http://${a.host}:${a.port}`;
  carol = await d.connect(CAROL, `${CAROL}-pw`);
  dave = await d.connect(DAVE, `${DAVE}-pw`);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
  page = await browser.newPage({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
});

afterAll(async () => {
  await browser?.close();
  await admin?.close();
  await con?.close();
  await d?.close();
});

describe('the console in a browser', () => {
  let mine: string;
  let theirs: string;

  it('signs in as a role and lists only its instances', async () => {
    mine = await start(carol, `'SELECT 1'`, 'carol-hello');
    theirs = await start(dave, `'SELECT 2'`, 'dave-hello');
    await page.goto(`${base}/console/`);
    await page.fill('#role', CAROL);
    await page.fill('#password', 'wrong');
    await page.click('#signin');
    await page.waitForSelector('#signin-error:has-text("wrong role name or password")');
    // The refused sign-in's 401 is the one failed load the page may log.
    problems.splice(0, problems.length, ...problems.filter((p) => !/status of 401/.test(p)));
    await page.fill('#password', `${CAROL}-pw`);
    await page.click('#signin');
    await page.waitForSelector(`table.instances tr[data-id="${mine}"]`);
    expect(await page.locator(`table.instances tr[data-id="${theirs}"]`).count()).toBe(0);
    expect(await page.textContent('header.top')).toContain(CAROL);
    // The list is live: a new instance of hers appears without a reload.
    const next = await start(carol, `'SELECT 3'`, 'carol-live');
    await page.waitForSelector(`table.instances tr[data-id="${next}"][data-status="completed"]`);
  });

  it('shows a running workflow and repaints its nodes as they run, without reloading', async () => {
    const id = await start(carol, `df.wait_for_signal('go', 600) ~> 'SELECT pg_sleep(2)' ~> 'SELECT 1 AS done'`, 'carol-watch');
    await page.goto(`${base}/console/`);
    await page.click(`table.instances tr[data-id="${id}"] a`);
    await page.waitForSelector(node('SIGNAL', 'go', 'running'));
    await page.waitForSelector('#live[data-state="live"]');
    await page.waitForSelector(node('SQL', 'pg_sleep', 'pending'));
    await page.evaluate(() => ((globalThis as unknown as { stayed: boolean }).stayed = true));
    await carol.query(`SELECT df.signal($1, 'go')`, [id]);
    await page.waitForSelector(node('SQL', 'pg_sleep', 'running'));
    await page.waitForSelector(node('SQL', 'pg_sleep', 'completed'));
    await page.waitForSelector(node('SQL', 'SELECT 1 AS done', 'completed'));
    await page.waitForSelector('.status-slot .pill[data-status="completed"]');
    // The same document all along: no reload.
    expect(await page.evaluate(() => (globalThis as unknown as { stayed?: boolean }).stayed)).toBe(true);
    // The node's panel: its definition and result.
    await page.click(node('SQL', 'SELECT 1 AS done'));
    expect(await page.textContent('#node-definition')).toBe('SELECT 1 AS done');
    expect(await page.textContent('#node-result')).toContain('done');
    expect(await page.textContent('#explain')).toContain(`Instance: ${id} (carol-watch)`);
  });

  it('cancels an instance', async () => {
    const id = await start(carol, `df.wait_for_signal('never', 600) ~> 'SELECT 1'`, 'carol-cancel');
    await open(id);
    await page.waitForSelector(node('SIGNAL', 'never', 'running'));
    await page.click('#cancel');
    await page.fill('#cancel-reason', 'changed my mind');
    await page.click('#cancel-confirm');
    await page.waitForSelector('.status-slot .pill[data-status="cancelled"]');
    await page.waitForSelector('.output:has-text("changed my mind")');
    expect(await page.isDisabled('#signal-send')).toBe(true);
  });

  it('sends a signal with a JSON payload to a waiting instance, which completes', async () => {
    const id = await start(carol, `df.as(df.wait_for_signal('approve', 600), 's') ~> 'SELECT $s.data AS payload'`, 'carol-approve');
    await open(id);
    await page.waitForSelector(node('SIGNAL', 'approve', 'running'));
    // The awaited signal's name is offered.
    expect(await page.inputValue('#signal-name')).toBe('approve');
    await page.fill('#signal-data', '{"approved_by": "carol"}');
    await page.click('#signal-send');
    await page.waitForSelector(node('SIGNAL', 'approve', 'completed'));
    await page.waitForSelector('.status-slot .pill[data-status="completed"]');
    await page.click(node('SQL', 'payload'));
    expect(await page.textContent('#node-result')).toContain('approved_by');
  });

  it('draws a failed step red, what it cut short skipped, and a loop left by a break', async () => {
    const bad = await start(carol, `'SELECT 1/0' ~> 'SELECT 2 AS never'`, 'carol-fails');
    const looped = await start(carol, `df.loop(df.seq(df.as('SELECT 1 AS x', 'r'), df.if_rows('r', df.break('done'), 'SELECT 2')))`, 'carol-loop');
    await open(bad);
    await page.waitForSelector(node('SQL', '1/0', 'failed'));
    await page.waitForSelector(node('SQL', 'never', 'skipped'));
    await page.waitForSelector('.status-slot .pill[data-status="failed"]');
    await page.click(node('SQL', '1/0'));
    expect(await page.textContent('#node-result')).toContain('division by zero');
    await open(looped);
    await page.waitForSelector('svg#graph g.node.loop[data-status="completed"]');
    await page.waitForSelector(node('BREAK', 'break', 'completed'));
    // The decision drawn for df.if_rows, coloured as df.instance_nodes says (a break passing through is recorded so).
    expect(await page.locator(node('IF', 'has rows')).count()).toBe(1);
  });

  it('draws a workflow of every shape, with a legend, and saves a screenshot of it', async () => {
    const id = await start(
      carol,
      `df.seq(df.as('SELECT 42 AS answer', 'a'),
        df.seq(df.join3('SELECT count(*) FROM pg_class', 'SELECT pg_sleep(0.2)', 'SELECT now() AS checked_at'),
        df.seq(df.if('SELECT $a.answer > 40', 'SELECT ''large'' AS size', 'SELECT ''small'' AS size'),
        df.seq(df.loop('SELECT pg_sleep(0.1)', 'SELECT false'),
        df.seq(df.race(df.wait_for_signal('approve'), df.sleep(86400)),
               'SELECT ''shipped'' AS outcome')))))`,
      'nightly-report',
    );
    await open(id);
    await page.waitForSelector(node('SIGNAL', 'approve', 'running'));
    await page.waitForSelector(node('SLEEP', 'sleep', 'running'));
    await page.waitForSelector(node('SQL', 'small', 'skipped'));
    expect(await page.locator('.legend li').allTextContents()).toEqual(['completed', 'running', 'pending', 'failed', 'skipped']);
    expect(await page.locator('svg#graph g.node.loop').count()).toBe(1);
    await page.click(node('SIGNAL', 'approve'));
    await page.waitForSelector('#node-definition:has-text("signal_name")');
    await page.setViewportSize({ width: 1440, height: 1260 });
    await page.click('#fit');
    await page.screenshot({ path: SCREENSHOT });
    await page.setViewportSize({ width: 1440, height: 900 });
    await carol.query('SELECT df.cancel($1)', [id]);
  });

  it('ran without a script error or a load the Content-Security-Policy refused', () => {
    expect(problems).toEqual([]);
  });
});
