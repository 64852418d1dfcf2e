#!/usr/bin/env bash
# telemetry-purge of the benchmark's 10M-event PostgreSQL day (check plus delete)
# against a bare DELETE of the same rows, each on a fresh copy of the benchmark's
# database, and the slowest of the inserts made into that day while it is purged.
#
# Needs the database `cargo bench --bench telemetry_daily -- --events 10000000` leaves
# (veris_bench_10000000: the day 2024-03-12, rolled up) and a release build:
#
#   cargo build --release && benches/purge_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/veris-jobs}
SERVER=${SERVER:-postgres://postgres@127.0.0.1:5432}
TEMPLATE=${TEMPLATE:-veris_bench_10000000}
DAY=${DAY:-2024-03-12}
NEXT=$(date -u -d "$DAY + 1 day" +%F)
# Days kept: the benchmark's day and the days before it are old, the days after not.
KEEP=$(( ( $(date -u +%s) - $(date -u -d "$NEXT" +%s) ) / 86400 ))
work=$(mktemp -d)
trap 'rm -rf "$work"; for db in veris_purge_a veris_purge_b; do psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done' EXIT

copy() {
    psql -q "$SERVER/postgres" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
    psql -q "$SERVER/postgres" -c "CREATE DATABASE $1 TEMPLATE $TEMPLATE"
    psql -q "$SERVER/$1" -c "VACUUM ANALYZE telemetry_events"
}

day_rows() {
    psql -At "$SERVER/$1" -c "SELECT count(*) FROM telemetry_events \
        WHERE created_at >= '$DAY' AND created_at < '$NEXT'"
}

# The purge, with inserts of late events into the day, one at a time, from when its
# deletion starts (an event inserted during the check is one its rollup does not
# hold: the day would rightly be kept).
copy veris_purge_a
DATABASE_URL="$SERVER/veris_purge_a" "$BIN" migrate >/dev/null
before=$(day_rows veris_purge_a)
(
    until [ "$(psql -At "$SERVER/veris_purge_a" -c 'SELECT count(*) FROM purged_days')" != 0 ]; do
        sleep 0.05
    done
    echo '\timing on'
    yes "INSERT INTO telemetry_events (event, user_id, created_at) VALUES ('late', 'bench', '$DAY 23:59:00+00');" | head -n 1000000
) | psql -q "$SERVER/veris_purge_a" >"$work/inserts.log" 2>&1 &
inserter=$!
start=$(date +%s.%N)
DATABASE_URL="$SERVER/veris_purge_a" "$BIN" telemetry-purge --keep-days "$KEEP" --json >"$work/purge.json"
end=$(date +%s.%N)
kill "$inserter" 2>/dev/null || true
wait "$inserter" 2>/dev/null || true
after=$(day_rows veris_purge_a)
inserted=$(grep -c '^Time:' "$work/inserts.log" || true)
slowest=$(grep '^Time:' "$work/inserts.log" | awk '{print $2}' | sort -g | tail -n 1)
day_ms=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print([d for d in r['days'] if d['date']==sys.argv[2]][0]['durationMs'])" "$work/purge.json" "$DAY")
deleted=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print([d for d in r['days'] if d['date']==sys.argv[2]][0]['eventsDeleted'])" "$work/purge.json" "$DAY")

# A bare DELETE of the same rows.
copy veris_purge_b
bare_start=$(date +%s.%N)
psql -q "$SERVER/veris_purge_b" -c "DELETE FROM telemetry_events WHERE created_at >= '$DAY' AND created_at < '$NEXT'"
bare_end=$(date +%s.%N)

python3 - "$before" "$deleted" "$after" "$day_ms" "$start" "$end" "$bare_start" "$bare_end" "$inserted" "$slowest" <<'EOF'
import sys
before, deleted, after, day_ms = (int(x) for x in sys.argv[1:5])
start, end, bare_start, bare_end = (float(x) for x in sys.argv[5:9])
inserted, slowest = int(sys.argv[9]), float(sys.argv[10] or 0)
bare = bare_end - bare_start
print(f"day's events before: {before:,}; deleted by the purge: {deleted:,}; left after: {after:,} (the late inserts)")
print(f"the purge of the day (check plus delete): {day_ms / 1000:.3f} s; the command: {end - start:.3f} s")
print(f"a bare DELETE of the same rows: {bare:.3f} s; purge / DELETE: {day_ms / 1000 / bare:.2f}x")
print(f"inserts into the day during the purge: {inserted:,}, the slowest {slowest:.1f} ms")
EOF
