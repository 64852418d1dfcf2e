-- One row per (day, event): the output of telemetry-daily.
CREATE TABLE IF NOT EXISTS telemetry_daily (
    date         date        NOT NULL,
    event        text        NOT NULL,
    count        bigint      NOT NULL,
    unique_users bigint      NOT NULL,
    meta         jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (date, event)
);

-- Which source events `veris-jobs demo` wrote, so that it can start afresh.
CREATE TABLE IF NOT EXISTS veris_demo_sample (
    first_id   bigint NOT NULL,
    last_id    bigint NOT NULL,
    start_date date   NOT NULL,
    end_date   date   NOT NULL
);
