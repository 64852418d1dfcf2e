-- The raw events table, created only when it does not exist yet.
-- created_at is RFC 3339 in UTC with milliseconds: 2024-01-15T10:00:00.000Z.
CREATE TABLE {source} (
    id         integer PRIMARY KEY,
    event      text,
    user_id    text,
    created_at text,
    meta       text
);
CREATE INDEX {source_index} ON {source_unqualified} (created_at);
