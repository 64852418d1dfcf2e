-- One row per (day, event): the output of telemetry-daily.
CREATE TABLE IF NOT EXISTS {rollup} (
    date         text    NOT NULL,
    event        text    NOT NULL,
    count        integer NOT NULL,
    unique_users integer NOT NULL,
    meta         text    NOT NULL,
    updated_at   text    NOT NULL,
    -- The distinct users as a sketch in the hll extension's storage format.
    users_hll    blob,
    -- Whether the day had not ended when its events were read (today so far).
    partial      integer NOT NULL DEFAULT 0,
    -- Each numeric metadata key's DDSketch (base64 of its protobuf message), as
    -- JSON text; NULL in rows written before, until their day is re-run.
    meta_sketches text,
    PRIMARY KEY (date, event)
);

-- Which source events `veris-jobs demo` wrote, so that it can start afresh.
CREATE TABLE IF NOT EXISTS veris_demo_sample (
    first_id   integer NOT NULL,
    last_id    integer NOT NULL,
    start_date text    NOT NULL,
    end_date   text    NOT NULL
);

-- One row per run that writes (dry runs are not recorded).
CREATE TABLE IF NOT EXISTS job_runs (
    id          integer PRIMARY KEY,
    job         text    NOT NULL,
    trigger     text    NOT NULL,
    started_at  text    NOT NULL,
    finished_at text,
    start_date  text    NOT NULL,
    end_date    text    NOT NULL,
    timezone    text    NOT NULL,
    status      text    NOT NULL,
    days_done   integer NOT NULL DEFAULT 0,
    days_total  integer NOT NULL,
    report      text,
    -- The source's highest id when a --changed run started.
    source_watermark integer,
    -- The report in brief (totals, the first failed days), for listings.
    summary     text
);

-- One row per (local hour, event), written with its day: the hour is the instant
-- the local hour begins, in UTC (2024-01-15T10:00:00Z).
CREATE TABLE IF NOT EXISTS telemetry_hourly (
    hour         text    NOT NULL,
    event        text    NOT NULL,
    count        integer NOT NULL,
    unique_users integer NOT NULL,
    users_hll    blob    NOT NULL,
    updated_at   text    NOT NULL,
    PRIMARY KEY (hour, event)
);

-- Days whose source events telemetry-purge deletes: the start is recorded before the
-- first batch, so an interrupted purge is finished by the next without a new check,
-- and telemetry-daily keeps the day's rollup. through_id bounds what may be deleted:
-- the largest id the check read.
CREATE TABLE IF NOT EXISTS purged_days (
    date           text    NOT NULL,
    timezone       text    NOT NULL,
    started_at     text    NOT NULL,
    finished_at    text,
    events_deleted integer NOT NULL DEFAULT 0,
    through_id     integer NOT NULL,
    PRIMARY KEY (date, timezone)
);
