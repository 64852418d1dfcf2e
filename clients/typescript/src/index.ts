// @veris/jobs-client: the calls of the Veris application to veris-jobs serve.
//
//   await runTelemetryDailyAggregation();                                        // yesterday
//   await runTelemetryDailyAggregation({ startDate: '2024-01-01', endDate: '2024-01-31' });
//   await runTelemetryDailyAggregation({ startDate: '2024-01-15', endDate: '2024-01-15', dryRun: true });
//
// The service's URL and secret come from VERIS_JOBS_URL and CRON_SECRET (READ_SECRET,
// if set, for the calls that only read), or from the second argument. No runtime
// dependency: `fetch` only (Node 18 or later, or any runtime with fetch).

import type {
  ErrorBody,
  Grouping,
  JobName,
  PurgeReport,
  RunList,
  RunRecord,
  RunReport,
  TelemetryReport,
} from './types.js';

export type * from './types.js';

/** How to reach the service. Every field falls back to the environment. */
export interface ClientOptions {
  /** The service's base URL, e.g. `http://127.0.0.1:3000`; default `VERIS_JOBS_URL`. */
  baseUrl?: string;
  /** The bearer secret; default `CRON_SECRET` (for reads, `READ_SECRET` first). */
  secret?: string;
  /** Cancels the call. */
  signal?: AbortSignal;
  /** Milliseconds before the call is given up (a `VerisJobsError` with code `timeout`);
   * default 15 minutes for runs, 30 seconds for reads. */
  timeoutMs?: number;
  /** Allows a plain `http://` URL to a host other than loopback (the secret would
   * cross the network in clear text). Default false. */
  allowInsecureHttp?: boolean;
  /** The `fetch` to use; default the global one. */
  fetch?: typeof fetch;
}

/** What to run; every field optional: no range means yesterday in the service's zone. */
export interface RunOptions {
  /** One day, `YYYY-MM-DD` (as `--date`); not together with `startDate` or `endDate`. */
  date?: string;
  /** The first day, `YYYY-MM-DD`. */
  startDate?: string;
  /** The last day (inclusive), `YYYY-MM-DD`; needs `startDate`. */
  endDate?: string;
  /** Read and aggregate, write nothing, report what would change. */
  dryRun?: boolean;
}

/** How to purge; `keepDays` falls back to the service's TELEMETRY_KEEP_DAYS. */
export interface PurgeOptions {
  /** Days of raw events to keep, ending yesterday (at least 1). */
  keepDays?: number;
  /** Check and count, delete nothing. */
  dryRun?: boolean;
  /** Rows deleted per transaction (default 10,000). */
  batchSize?: number;
}

/** What to read back. */
export interface ReportOptions {
  startDate?: string;
  endDate?: string;
  by?: Grouping;
  /** Only these events. */
  events?: string[];
}

/** An answer other than the one asked for. */
export class VerisJobsError extends Error {
  /** The HTTP status; 0 when there was no answer (network, timeout, abort). */
  readonly status: number;
  /** The service's error code (`day_busy`, `unauthorized`, ...), or `timeout`,
   * `aborted`, `network`, `configuration`, `invalid_option` (an option the call does
   * not take), `run_failed` (a 500 with a report), `invalid_answer`, `http_error`. */
  readonly code: string;
  /** For a 500: the run report, with the failed days and their errors. */
  readonly report: RunReport | PurgeReport | undefined;

  constructor(status: number, code: string, message: string, report?: RunReport | PurgeReport) {
    super(message);
    this.name = 'VerisJobsError';
    this.status = status;
    this.code = code;
    this.report = report;
  }
}

const RUN_TIMEOUT_MS = 15 * 60 * 1000;
const READ_TIMEOUT_MS = 30 * 1000;

/**
 * Runs telemetry-daily: yesterday, or `startDate`..`endDate`, as a dry run if asked.
 * Resolves to the run report when every day is ok; rejects with a `VerisJobsError`
 * otherwise (a 500 carries the report).
 */
export async function runTelemetryDailyAggregation(
  options: RunOptions = {},
  client: ClientOptions = {},
): Promise<RunReport> {
  onlyKnown('runTelemetryDailyAggregation', options, ['date', 'startDate', 'endDate', 'dryRun']);
  onlyKnown('runTelemetryDailyAggregation', client, CLIENT_KEYS);
  const body: Record<string, string | boolean> = {};
  if (options.date !== undefined) body.date = options.date;
  if (options.startDate !== undefined) body.startDate = options.startDate;
  if (options.endDate !== undefined) body.endDate = options.endDate;
  if (options.dryRun !== undefined) body.dryRun = options.dryRun;
  return call<RunReport>('/api/jobs/telemetry-daily', client, 'CRON_SECRET', RUN_TIMEOUT_MS, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/**
 * Runs telemetry-purge: deletes the raw events of days older than `keepDays` whose
 * rollups hold them, and nothing else. Resolves to the purge report when every day
 * is ok; rejects with a `VerisJobsError` otherwise (`keep_days_required` when
 * neither the call nor the service gives `keepDays`).
 */
export async function runTelemetryPurge(
  options: PurgeOptions = {},
  client: ClientOptions = {},
): Promise<PurgeReport> {
  onlyKnown('runTelemetryPurge', options, ['keepDays', 'dryRun', 'batchSize']);
  onlyKnown('runTelemetryPurge', client, CLIENT_KEYS);
  const body: Record<string, number | boolean> = {};
  if (options.keepDays !== undefined) body.keepDays = options.keepDays;
  if (options.dryRun !== undefined) body.dryRun = options.dryRun;
  if (options.batchSize !== undefined) body.batchSize = options.batchSize;
  return call<PurgeReport>('/api/jobs/telemetry-purge', client, 'CRON_SECRET', RUN_TIMEOUT_MS, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
}

/** Reads the rollups back, grouped by hour, day, week, month or the whole range. */
export async function getTelemetryReport(
  options: ReportOptions = {},
  client: ClientOptions = {},
): Promise<TelemetryReport> {
  onlyKnown('getTelemetryReport', options, ['startDate', 'endDate', 'by', 'events']);
  onlyKnown('getTelemetryReport', client, CLIENT_KEYS);
  const query = new URLSearchParams();
  if (options.startDate !== undefined) query.set('startDate', options.startDate);
  if (options.endDate !== undefined) query.set('endDate', options.endDate);
  if (options.by !== undefined) query.set('by', options.by);
  for (const event of options.events ?? []) query.append('event', event);
  const text = query.toString();
  const suffix = text === '' ? '' : `?${text}`;
  return call<TelemetryReport>(`/api/telemetry/report${suffix}`, client, 'READ_SECRET', READ_TIMEOUT_MS);
}

/** The most recent runs (of one job, or of all), newest first (at most 100), each
 * with its summary. */
export async function listRuns(
  options: { limit?: number; job?: JobName } = {},
  client: ClientOptions = {},
): Promise<RunRecord[]> {
  onlyKnown('listRuns', options, ['limit', 'job']);
  onlyKnown('listRuns', client, CLIENT_KEYS);
  const query = new URLSearchParams();
  if (options.limit !== undefined) query.set('limit', String(options.limit));
  if (options.job !== undefined) query.set('job', options.job);
  const text = query.toString();
  const suffix = text === '' ? '' : `?${text}`;
  const list = await call<RunList>(`/api/jobs/runs${suffix}`, client, 'READ_SECRET', READ_TIMEOUT_MS);
  return list.runs;
}

/** One run with its whole report. */
export async function getRun(id: number, client: ClientOptions = {}): Promise<RunRecord> {
  onlyKnown('getRun', client, CLIENT_KEYS);
  return call<RunRecord>(`/api/jobs/runs/${encodeURIComponent(String(id))}`, client, 'READ_SECRET', READ_TIMEOUT_MS);
}

const CLIENT_KEYS = ['baseUrl', 'secret', 'signal', 'timeoutMs', 'allowInsecureHttp', 'fetch'];

/**
 * Refuses an option the call does not take: from JavaScript, or from an object built
 * elsewhere, a misspelt key (`startdate`) would otherwise be dropped and the call would
 * run with the defaults (yesterday) and report success.
 */
function onlyKnown(call: string, options: object, known: string[]): void {
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new VerisJobsError(
        0,
        'invalid_option',
        `${call}: unknown option '${key}'; expected ${known.join(', ')}`,
      );
    }
  }
}

function environment(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = process?.env?.[name];
  return value === '' ? undefined : value;
}

/** The service's URL, checked: https, or http only to loopback unless allowed. */
function baseUrl(client: ClientOptions): URL {
  const text = client.baseUrl ?? environment('VERIS_JOBS_URL');
  if (text === undefined) {
    throw new VerisJobsError(0, 'configuration', 'no service URL: set VERIS_JOBS_URL or pass { baseUrl }');
  }
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new VerisJobsError(0, 'configuration', 'the service URL (VERIS_JOBS_URL or baseUrl) is not a URL');
  }
  const loopback = ['localhost', '127.0.0.1', '[::1]'].includes(url.hostname) || url.hostname.endsWith('.localhost');
  if (url.protocol === 'http:' && !loopback && client.allowInsecureHttp !== true) {
    throw new VerisJobsError(
      0,
      'configuration',
      `refusing to send the secret over plain http to ${url.hostname}: use https, or pass { allowInsecureHttp: true }`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new VerisJobsError(0, 'configuration', `the service URL must be http or https, not ${url.protocol}`);
  }
  return url;
}

function secret(client: ClientOptions, preferred: 'CRON_SECRET' | 'READ_SECRET'): string {
  const value = client.secret ?? environment(preferred) ?? environment('CRON_SECRET');
  if (value === undefined) {
    throw new VerisJobsError(0, 'configuration', `no secret: set ${preferred} or pass { secret }`);
  }
  return value;
}

async function call<T>(
  path: string,
  client: ClientOptions,
  secretName: 'CRON_SECRET' | 'READ_SECRET',
  defaultTimeout: number,
  init: RequestInit = {},
): Promise<T> {
  const base = baseUrl(client);
  const url = new URL(path.replace(/^\//, ''), base.href.endsWith('/') ? base : `${base.href}/`);
  const waitMs = client.timeoutMs ?? defaultTimeout;
  if (typeof waitMs !== 'number' || !Number.isFinite(waitMs) || waitMs <= 0) {
    throw new VerisJobsError(0, 'invalid_option', `timeoutMs must be a positive number of milliseconds, not ${String(waitMs)}`);
  }
  const timeout = AbortSignal.timeout(waitMs);
  const combined = client.signal ? either(client.signal, timeout) : { signal: timeout, release: () => {} };
  const { signal } = combined;
  const fetcher = client.fetch ?? globalThis.fetch;
  // What a failure while waiting means: the timeout, the caller's abort, or the network.
  const failure = (error: unknown, doing: string): VerisJobsError => {
    if (error instanceof VerisJobsError) return error;
    if (timeout.aborted) return new VerisJobsError(0, 'timeout', `no answer from ${url.origin} within ${waitMs} ms`);
    if (client.signal?.aborted) return new VerisJobsError(0, 'aborted', 'the call was aborted');
    // The message says what failed (a refused connection, say, which Node.js keeps in
    // the error's cause); never the secret.
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    const why = cause?.code ?? cause?.message;
    const message = `${(error as Error).message}${why ? ` (${why})` : ''}`;
    return new VerisJobsError(0, 'network', `${url.origin} ${doing}: ${message}`);
  };
  try {
    let response: Response;
    try {
      response = await fetcher(url, {
        ...init,
        headers: { ...(init.headers as Record<string, string> | undefined), Authorization: `Bearer ${secret(client, secretName)}` },
        signal,
        redirect: 'error',
        cache: 'no-store',
      });
    } catch (error) {
      throw failure(error, 'could not be reached');
    }
    let text: string;
    try {
      text = await response.text();
    } catch (error) {
      throw failure(error, 'stopped answering');
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new VerisJobsError(response.status, 'invalid_answer', `the service answered ${response.status} with a body that is not JSON`);
    }
    if (response.status === 200) return body as T;
    if (response.status === 500 && isReport(body)) {
      const failed = body.days.filter((day) => day.status === 'failed').map((day) => `${day.date}: ${day.error ?? ''}`);
      throw new VerisJobsError(500, 'run_failed', `the run finished and some days failed (${failed.join('; ')})`, body);
    }
    const error = (body as Partial<ErrorBody>).error;
    throw new VerisJobsError(response.status, error?.code ?? 'http_error', error?.message ?? `the service answered ${response.status}`);
  } finally {
    // A signal the caller reuses for many calls keeps no listener of this one.
    combined.release();
  }
}

/** A signal that aborts when either does (`AbortSignal.any` needs Node 20), and how to
 * take its listeners off them once the call is over. */
function either(a: AbortSignal, b: AbortSignal): { signal: AbortSignal; release: () => void } {
  const controller = new AbortController();
  const listeners: Array<[AbortSignal, () => void]> = [];
  for (const signal of [a, b]) {
    if (signal.aborted) {
      controller.abort(signal.reason);
    } else {
      const listener = () => controller.abort(signal.reason);
      signal.addEventListener('abort', listener, { once: true });
      listeners.push([signal, listener]);
    }
  }
  const release = () => {
    for (const [signal, listener] of listeners) signal.removeEventListener('abort', listener);
  };
  return { signal: controller.signal, release };
}

function isReport(body: unknown): body is RunReport | PurgeReport {
  return typeof body === 'object' && body !== null && 'days' in body && Array.isArray((body as RunReport).days);
}
