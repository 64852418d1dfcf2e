#!/usr/bin/env bash
# Two or more builds of `veris-jobs telemetry-daily` side by side over the same
# database, each run writing the day's rollups afresh (its daily and hourly rows
# are deleted first): one discarded run of each, then each run of each build in
# turn (every other round in reverse order), then the medians of the wall time and
# of the command's CPU time (user + system).
#
#   DATABASE_URL=... benches/job_ab.sh BUILD_A BUILD_B [...]
#
# RUNS (default 9) and DAY (default 2024-03-12, the benchmark's day) change what is
# run; JOB_ARGS adds arguments (say `--dry-run`, which writes nothing). The rows are
# deleted with python3's sqlite3 for a SQLite URL, with psql otherwise.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to run on}"
if (($# < 2)); then
    echo "usage: DATABASE_URL=... $0 BUILD_A BUILD_B [...]" >&2
    exit 2
fi
RUNS=${RUNS:-9}
DAY=${DAY:-2024-03-12}
((RUNS >= 1)) || { echo "RUNS must be at least 1" >&2; exit 2; }
read -ra job_args <<< "${JOB_ARGS:-}"
builds=("$@")
TIMES=$(mktemp)
trap 'rm -f "$TIMES"' EXIT

clear_day() {
    local next
    next=$(date -u -d "$DAY + 1 day" +%F)
    if [[ $DATABASE_URL == sqlite:* ]]; then
        python3 - "$DATABASE_URL" "$DAY" "$next" <<'EOF'
import os, sqlite3, sys
url, day, following = sys.argv[1:]
path = url.split("?")[0].removeprefix("sqlite:").removeprefix("//")
if not os.path.exists(path):
    sys.exit(f"no database at {path}")
db = sqlite3.connect(path)
db.execute("DELETE FROM telemetry_daily WHERE date = ?", (day,))
db.execute("DELETE FROM telemetry_hourly WHERE hour >= ? AND hour < ?", (day, following))
db.commit()
EOF
    else
        psql -q "$DATABASE_URL" -c "DELETE FROM telemetry_daily WHERE date = '$DAY'" \
            -c "DELETE FROM telemetry_hourly WHERE hour >= '$DAY' AND hour < '$next'"
    fi
}

# Runs build $1 once; prints its wall and CPU seconds.
run() {
    clear_day
    /usr/bin/time -f "%e %U %S" -o "$TIMES" "$1" telemetry-daily --date "$DAY" "${job_args[@]}" \
        > /dev/null
    awk '{ printf "%s %.3f\n", $1, $2 + $3 }' "$TIMES"
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

declare -A walls cpus
for build in "${builds[@]}"; do
    run "$build" > /dev/null
done
for ((round = 0; round < RUNS; round++)); do
    order=("${builds[@]}")
    if ((round % 2)); then
        order=()
        for ((i = ${#builds[@]} - 1; i >= 0; i--)); do order+=("${builds[i]}"); done
    fi
    for build in "${order[@]}"; do
        read -r wall cpu < <(run "$build")
        walls[$build]+="$wall "
        cpus[$build]+="$cpu "
    done
done
printf '%-40s %10s %10s\n' build "wall (s)" "CPU (s)"
for build in "${builds[@]}"; do
    printf '%-40s %10s %10s\n' "$build" \
        "$(tr ' ' '\n' <<< "${walls[$build]}" | grep . | median)" \
        "$(tr ' ' '\n' <<< "${cpus[$build]}" | grep . | median)"
done
