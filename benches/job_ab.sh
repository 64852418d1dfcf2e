#!/usr/bin/env bash
# Two or more builds of `veris-jobs telemetry-daily` side by side over the same
# database, timed by benches/report_ab.sh (see there), each run writing the
# benchmark's day afresh: the day's daily and hourly rows are deleted before every
# run, untimed (with python3's sqlite3 for a SQLite URL, with psql otherwise).
#
#   DATABASE_URL=... benches/job_ab.sh BUILD_A BUILD_B [...]
#
# RUNS (default 9) and DAY (default 2024-03-12) change what is run; JOB_ARGS adds
# arguments (say `--dry-run`, which writes nothing).
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to run on}"
DAY=${DAY:-2024-03-12}
next=$(date -u -d "$DAY + 1 day" +%F)

if [[ $DATABASE_URL == sqlite:* ]]; then
    path=${DATABASE_URL%%\?*}
    path=${path#sqlite:}
    path=${path#//}
    [[ -f $path ]] || { echo "no database at $path" >&2; exit 2; }
    clear="import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute('DELETE FROM telemetry_daily WHERE date = ?', (sys.argv[2],))
db.execute('DELETE FROM telemetry_hourly WHERE hour >= ? AND hour < ?', sys.argv[2:4])
db.commit()"
    BEFORE_EACH=$(printf 'python3 -c %q %q %q %q' "$clear" "$path" "$DAY" "$next")
else
    BEFORE_EACH=$(printf 'psql -q %q -c %q -c %q' "$DATABASE_URL" \
        "DELETE FROM telemetry_daily WHERE date = '$DAY'" \
        "DELETE FROM telemetry_hourly WHERE hour >= '$DAY' AND hour < '$next'")
fi
export BEFORE_EACH
export COMMAND_ARGS="telemetry-daily --date $DAY --json ${JOB_ARGS:-}"
# Each run reports its own timings: the answers are not compared.
export ANSWERS_MAY_DIFFER=1
exec "$(dirname "$0")/report_ab.sh" "$@"
