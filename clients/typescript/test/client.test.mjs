// The client against a real `veris-jobs serve` on a free port, over a SQLite file
// filled by `veris-jobs demo`. VERIS_JOBS_BIN names the binary (cargo's test sets it).
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import {
  VerisJobsError,
  getRun,
  getTelemetryReport,
  listRuns,
  runTelemetryPurge,
  runTelemetryDailyAggregation,
} from '../dist/index.js';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.VERIS_JOBS_BIN ?? join(here, '../../../target/debug/veris-jobs');
const CRON = 'client-test-cron-secret-0123';
const READ = 'client-test-read-secret-0123';
const dir = mkdtempSync(join(tmpdir(), 'veris-jobs-client-'));
const database = `sqlite://${join(dir, 'demo.db')}`;
const servers = [];
// Real answers, kept to check the types against (see the last test).
const answers = {};

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function serve(extra = []) {
  const port = await freePort();
  const child = spawn(BIN, ['serve', '--bind', `127.0.0.1:${port}`, ...extra], {
    env: { PATH: process.env.PATH, DATABASE_URL: database, CRON_SECRET: CRON, READ_SECRET: READ },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  servers.push(child);
  const baseUrl = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i += 1) {
    try {
      if ((await fetch(`${baseUrl}/healthz`)).ok) return baseUrl;
    } catch { /* not up yet */ }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`veris-jobs serve did not start on ${baseUrl}`);
}

function yesterday() {
  const day = new Date(Date.now() - 86_400_000);
  return day.toISOString().slice(0, 10);
}

let baseUrl;
let demo;

before(async () => {
  const output = execFileSync(BIN, ['demo'], { env: { PATH: process.env.PATH, DATABASE_URL: database } }).toString();
  const range = /over (\d{4}-\d{2}-\d{2}) \.\. (\d{4}-\d{2}-\d{2})/.exec(output);
  assert.ok(range, output);
  demo = { start: range[1], end: range[2] };
  baseUrl = await serve();
  process.env.VERIS_JOBS_URL = baseUrl;
  process.env.CRON_SECRET = CRON;
  delete process.env.READ_SECRET;
});

after(() => {
  for (const child of servers) child.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
});

describe('the three calls of the Veris jobs README', () => {
  it('runs yesterday by default', async () => {
    const report = await runTelemetryDailyAggregation();
    assert.equal(report.ok, true);
    assert.equal(report.dryRun, false);
    assert.equal(report.days.length, 1);
    assert.equal(report.startDate, yesterday());
    assert.ok(report.days[0].eventsRead > 0, 'the demo wrote events yesterday');
    answers.yesterday = report;
  });

  it('runs a range', async () => {
    const report = await runTelemetryDailyAggregation({ startDate: demo.start, endDate: demo.end });
    assert.deepEqual(report.days.map((d) => d.status), ['written', 'written', 'written']);
    assert.equal(report.totals.unchanged, report.totals.rows, 'the demo wrote them already');
    answers.range = report;
  });

  it('previews a day with dryRun', async () => {
    const report = await runTelemetryDailyAggregation({ startDate: demo.end, endDate: demo.end, dryRun: true });
    assert.equal(report.dryRun, true);
    assert.equal(report.days[0].status, 'dry_run');
    answers.dryRun = report;
  });
});

describe('answers other than 200', () => {
  it('rejects a wrong secret with 401', async () => {
    await assert.rejects(runTelemetryDailyAggregation({}, { secret: 'wrong-secret-0123456789' }), (error) => {
      assert.ok(error instanceof VerisJobsError);
      assert.equal(error.status, 401);
      assert.equal(error.code, 'unauthorized');
      assert.ok(!error.message.includes('wrong-secret'), 'the secret is never echoed');
      return true;
    });
  });

  it('rejects a malformed date with 400', async () => {
    await assert.rejects(runTelemetryDailyAggregation({ startDate: '2024-13-01' }), { status: 400, code: 'invalid_date' });
  });

  it('rejects a day another run holds with 409', async () => {
    // Another program holds the day's byte of the lock file, as another run would.
    const lockFile = `${join(dir, 'demo.db')}.veris-lock`;
    const [y, m, d] = demo.end.split('-').map(Number);
    const offset = Math.round(Date.UTC(y, m - 1, d) / 86_400_000) + 4_000_000;
    const holder = spawn('python3', ['-c', [
      'import fcntl, os, sys, time',
      `fd = os.open(${JSON.stringify(lockFile)}, os.O_RDWR | os.O_CREAT, 0o600)`,
      `fcntl.lockf(fd, fcntl.LOCK_EX, 1, ${offset})`,
      "print('held', flush=True)",
      'time.sleep(30)',
    ].join('\n')], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((resolve) => holder.stdout.once('data', resolve));
    try {
      await assert.rejects(runTelemetryDailyAggregation({ startDate: demo.end }), (error) => {
        assert.equal(error.status, 409);
        assert.equal(error.code, 'day_busy');
        assert.match(error.message, new RegExp(demo.end));
        return true;
      });
    } finally {
      holder.kill();
    }
  });

  it('rejects a run whose days failed with 500 and carries the report', async () => {
    const broken = await serve(['--source-table', 'no_such_table']);
    await assert.rejects(runTelemetryDailyAggregation({ startDate: demo.end }, { baseUrl: broken }), (error) => {
      assert.equal(error.status, 500);
      assert.equal(error.code, 'run_failed');
      assert.equal(error.report.days[0].status, 'failed');
      assert.match(error.report.days[0].error, /no_such_table/);
      answers.failed = error.report;
      return true;
    });
  });

  it('gives up after its timeout, and when aborted', async () => {
    await assert.rejects(runTelemetryDailyAggregation({ dryRun: true }, { timeoutMs: 1 }), { code: 'timeout' });
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(runTelemetryDailyAggregation({ dryRun: true }, { signal: controller.signal }), { code: 'aborted' });
  });

  it('refuses a timeout that is no duration, says why a connection failed, and leaves no listener on a reused signal', async () => {
    await assert.rejects(listRuns({}, { timeoutMs: -5 }), { status: 0, code: 'invalid_option' });
    await assert.rejects(listRuns({}, { timeoutMs: Number.NaN }), { code: 'invalid_option' });
    const closed = await new Promise((resolve) => {
      const probe = createServer();
      probe.listen(0, '127.0.0.1', () => {
        const { port } = probe.address();
        probe.close(() => resolve(`http://127.0.0.1:${port}`));
      });
    });
    await assert.rejects(listRuns({}, { baseUrl: closed }), (error) => {
      assert.equal(error.code, 'network');
      assert.match(error.message, /ECONNREFUSED/, 'the cause is in the message');
      return true;
    });
    const shared = new AbortController();
    for (let i = 0; i < 5; i += 1) await listRuns({ limit: 1 }, { signal: shared.signal, secret: READ });
    assert.equal(getEventListeners(shared.signal, 'abort').length, 0);
  });

  it('refuses plain http to another host unless told, and says what is missing', async () => {
    await assert.rejects(runTelemetryDailyAggregation({}, { baseUrl: 'http://jobs.example.org' }), (error) => {
      assert.equal(error.code, 'configuration');
      assert.match(error.message, /https/);
      return true;
    });
    await assert.rejects(
      runTelemetryDailyAggregation({}, { baseUrl: 'http://jobs.example.org', allowInsecureHttp: true, timeoutMs: 2000 }),
      (error) => ['network', 'timeout'].includes(error.code),
    );
    await assert.rejects(runTelemetryDailyAggregation({}, { baseUrl: 'not a url' }), { code: 'configuration' });
  });
});

describe('the readers', () => {
  it('reads the report with READ_SECRET, which cannot run the job', async () => {
    const report = await getTelemetryReport(
      { startDate: demo.start, endDate: demo.end, by: 'range', events: ['page_view', 'purchase'] },
      { secret: READ },
    );
    assert.equal(report.by, 'range');
    assert.deepEqual(report.periods[0].events.map((e) => e.event), ['page_view', 'purchase']);
    assert.ok(report.periods[0].total.uniqueUsers > 0);
    answers.report = report;
    await assert.rejects(runTelemetryDailyAggregation({}, { secret: READ }), { status: 401 });
  });

  it('lists the runs and reads one whole', async () => {
    const runs = await listRuns({ limit: 5 }, { secret: READ });
    assert.ok(runs.length >= 2);
    assert.equal(runs[0].trigger, 'http');
    assert.equal(runs[0].report, undefined, 'a listing has summaries, not reports');
    const run = await getRun(runs[0].id, { secret: READ });
    assert.equal(run.report.job, 'telemetry-daily');
    answers.runs = runs;
    answers.run = run;
    await assert.rejects(listRuns({ limit: 1000 }), { status: 400, code: 'invalid_limit' });
  });
});

describe('options', () => {
  it('runs one day with date, as --date, and refuses an option no call takes', async () => {
    const report = await runTelemetryDailyAggregation({ date: demo.end, dryRun: true });
    assert.equal(report.startDate, demo.end);
    assert.equal(report.endDate, demo.end);
    assert.equal(report.dryRun, true);
    await assert.rejects(runTelemetryDailyAggregation({ startdate: demo.start }), (error) => {
      assert.ok(error instanceof VerisJobsError);
      assert.equal(error.status, 0, 'refused before any request');
      assert.equal(error.code, 'invalid_option');
      assert.match(error.message, /'startdate'/);
      return true;
    });
    await assert.rejects(
      runTelemetryDailyAggregation({ date: demo.end, startDate: demo.start }),
      { status: 400, code: 'invalid_range' },
    );
    await assert.rejects(listRuns({ limt: 5 }), { code: 'invalid_option' });
    await assert.rejects(runTelemetryPurge({ keepdays: 3 }), { code: 'invalid_option' });
  });
});

describe('the purge', () => {
  it('previews a purge and needs keepDays', async () => {
    const report = await runTelemetryPurge({ keepDays: 1, dryRun: true });
    assert.equal(report.job, 'telemetry-purge');
    assert.equal(report.dryRun, true);
    assert.equal(report.before, yesterday());
    assert.ok(report.days.length >= 1, 'the demo wrote days before yesterday');
    for (const day of report.days) assert.equal(day.status, 'would_purge');
    answers.purge = report;
    await assert.rejects(runTelemetryPurge({}), { status: 400, code: 'keep_days_required' });
    await assert.rejects(runTelemetryPurge({ keepDays: 1 }, { secret: READ }), { status: 401 });
  });
});

describe('the types', () => {
  it('describe what the server answers', () => {
    // Each real answer as an object literal of its declared type: tsc refuses a missing
    // field, a field of another type, and (object literals) a field the type lacks.
    const typed = {
      yesterday: 'RunReport', range: 'RunReport', dryRun: 'RunReport', failed: 'RunReport',
      report: 'TelemetryReport', runs: 'RunRecord[]', run: 'RunRecord', purge: 'PurgeReport',
    };
    const lines = ["import type { PurgeReport, RunRecord, RunReport, TelemetryReport } from '../src/index.js';"];
    for (const [name, type] of Object.entries(typed)) {
      assert.ok(answers[name], `the ${name} answer was recorded`);
      lines.push(`export const ${name}: ${type} = ${JSON.stringify(answers[name], null, 2)};`);
    }
    const fixtures = join(here, 'fixtures.ts');
    writeFileSync(fixtures, `${lines.join('\n')}\n`);
    const tsc = join(here, '../node_modules/typescript/bin/tsc');
    execFileSync(process.execPath, [
      tsc, '--noEmit', '--strict', '--exactOptionalPropertyTypes', '--target', 'ES2022',
      '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--lib', 'ES2022,DOM', fixtures,
    ], { stdio: 'inherit' });
  });
});
