// What veris-jobs serve answers, as TypeScript types. They mirror the Rust structs of
// veris_jobs::model (RunReport, TelemetryReport, RunRecord, ...); the tests check them
// against the real server's answers, so a change on either side fails there.

/** What happened to one day of a run. */
export type DayStatus = 'written' | 'dry_run' | 'kept' | 'failed';

/** Hour rows (`telemetry_hourly`) inserted, updated, deleted and left as they were. */
export interface HourCounts {
  inserted: number;
  updated: number;
  deleted: number;
  unchanged: number;
}

/** The figures of one day of a run. */
export interface DayReport {
  /** The day, `YYYY-MM-DD`. */
  date: string;
  status: DayStatus;
  /** Every source event of the day, bad ones included. */
  eventsRead: number;
  /** The sum of `skipped`. */
  eventsSkipped: number;
  /** Events skipped whole or stripped of metadata, by reason (non-zero only). */
  skipped: Record<string, number>;
  /** Rollup rows the day has after the run (or would have, in a dry run). */
  rows: number;
  inserted: number;
  updated: number;
  deleted: number;
  unchanged: number;
  durationMs: number;
  /** Why the day failed, or why it was kept; `null` otherwise. */
  error: string | null;
  /** Why a kept day was kept, as a name: `purged` when telemetry-purge deleted its
   * events; absent otherwise. */
  reason?: 'purged';
  /** Bytes spilled to disk past the memory limit; absent when the day fitted. */
  spilledBytes?: number;
  /** The day's hour rows, counted apart from its rows. */
  hours: HourCounts;
}

/** The sums over all days of a run. */
export interface Totals {
  eventsRead: number;
  eventsSkipped: number;
  rows: number;
  inserted: number;
  updated: number;
  deleted: number;
  unchanged: number;
  /** The days' hour rows. */
  hours: HourCounts;
}

/** The earlier days a `--changed` run added to its range. */
export interface ChangedDays {
  sinceId: number | null;
  throughId: number;
  earlierDays: string[];
}

/** The report of one run of telemetry-daily. */
export interface RunReport {
  job: string;
  dryRun: boolean;
  /** False when any day failed. */
  ok: boolean;
  startDate: string;
  endDate: string;
  timezone: string;
  days: DayReport[];
  totals: Totals;
  durationMs: number;
  changed?: ChangedDays;
}

/** How a telemetry report's periods are cut. */
export type Grouping = 'hour' | 'day' | 'week' | 'month' | 'range';

/** One metadata key's part of a summary merged over a period. */
export interface KeySummary {
  /** Events where the key had a non-null value. */
  n: number;
  /** The top values of strings, booleans and nested values, with their counts. */
  values?: Record<string, number>;
  /** Occurrences of the values left out of `values`. */
  other?: number;
  /** Present (false) when a day had left values in `other`. */
  valuesExact?: boolean;
  /** The numbers' exact sum; `null` when it overflowed. */
  sum?: number | null;
  min?: number | null;
  max?: number | null;
  /** Percentiles of the numbers, each within 1% of the exact one; absent when a
   * day of the period has no sketches (see `missingMetaSketches`). */
  p50?: number;
  p90?: number;
  p99?: number;
}

/** One event in a period of a telemetry report. */
export interface EventReport {
  event: string;
  count: number;
  /** Exact for one event on one day, else an estimate; `null` when unknown. */
  uniqueUsers: number | null;
  uniqueUsersExact: boolean;
  /** The rows' metadata summaries merged, by key; `$dropped_keys` counts the keys
   * left out. */
  meta: Record<string, KeySummary | number>;
}

/** All the period's events together, a user counted once. */
export interface Total {
  count: number;
  uniqueUsers: number | null;
  uniqueUsersExact: boolean;
}

/** One period of a telemetry report. */
export interface PeriodReport {
  start: string;
  end: string;
  events: EventReport[];
  total: Total;
  /** Days whose rows have no sketch. */
  missingSketches?: string[];
  /** Days whose rows have numbers but no sketches of them: their keys have no
   * percentiles until those days are run again. */
  missingMetaSketches?: string[];
  /** Present (true) when the period holds a day read before its end: today so far. */
  partial?: boolean;
  /** When a partial period's rows were last written, RFC 3339 in UTC. */
  asOf?: string;
}

/** The rollups of a range, read back. */
export interface TelemetryReport {
  startDate: string;
  endDate: string;
  by: Grouping;
  periods: PeriodReport[];
}

/** A failed day, as a run's summary names it. */
export interface FailedDay {
  date: string;
  error: string;
}

/** A finished run in brief. */
export interface RunSummary {
  ok: boolean;
  dryRun: boolean;
  /** A telemetry-daily run's sums, or a telemetry-purge run's. */
  totals: Totals | PurgeTotals;
  durationMs: number;
  failedDaysTotal: number;
  failedDays: FailedDay[];
}

/** The state of a recorded run. */
export type RunStatus = 'running' | 'ok' | 'failed' | 'abandoned';

/** One row of the run history. */
export interface RunRecord {
  id: number;
  job: string;
  trigger: 'cli' | 'http' | 'schedule';
  startedAt: string;
  finishedAt: string | null;
  startDate: string;
  endDate: string;
  timezone: string;
  status: RunStatus;
  daysDone: number;
  daysTotal: number;
  sourceWatermark: number | null;
  summary: RunSummary | null;
  /** The whole report: only when one run is asked for. */
  report?: RunReport | PurgeReport;
}

/** The jobs `/api/jobs/{job}` runs. */
export type JobName = 'telemetry-daily' | 'telemetry-purge';

/** What happened to one old day's events in a purge. */
export type PurgeStatus = 'purged' | 'would_purge' | 'kept' | 'failed';

/** Why an old day's events were kept. */
export type KeptReason = 'not_rolled_up' | 'partial' | 'rollup_out_of_date';

/** One old day of a purge. */
export interface PurgeDay {
  date: string;
  status: PurgeStatus;
  reason: KeptReason | null;
  /** Events deleted (or, in a dry run, that would be). */
  eventsDeleted: number;
  durationMs: number;
  error: string | null;
}

/** The sums over a purge's days. */
export interface PurgeTotals {
  purged: number;
  kept: number;
  failed: number;
  eventsDeleted: number;
}

/** The report of a telemetry-purge run. */
export interface PurgeReport {
  job: 'telemetry-purge';
  dryRun: boolean;
  ok: boolean;
  keepDays: number;
  /** The first day kept whatever its rollup. */
  before: string;
  timezone: string;
  days: PurgeDay[];
  totals: PurgeTotals;
  durationMs: number;
}

/** What `GET /api/jobs/runs` answers. */
export interface RunList {
  runs: RunRecord[];
}

/** The body of an answer other than 200 and 500. */
export interface ErrorBody {
  error: { code: string; message: string };
}
