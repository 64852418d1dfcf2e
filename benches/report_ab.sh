#!/usr/bin/env bash
# Two or more builds of `veris-jobs report` side by side over the same database:
# each run of each build in turn, then the medians of the wall time, the command's
# CPU time (user + system) and, when PostgreSQL runs on this machine, the CPU time
# its processes spent meanwhile (from /proc, which needs root or the postgres user).
#
#   DATABASE_URL=... benches/report_ab.sh BUILD_A BUILD_B [...]
#
# RUNS (default 9) and REPORT_ARGS (default: a year by week before 2024-03-12, as
# the benchmark's year report) change what is run. Each build's last answer is
# left in $TMPDIR/report-ab-N.json for comparing.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to report on}"
RUNS=${RUNS:-9}
REPORT_ARGS=${REPORT_ARGS:-"--start-date 2023-03-13 --end-date 2024-03-11 --by week --json"}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

# Clock ticks used by every postgres process, ended children included.
server_ticks() {
    local total=0 pid
    for pid in $(pgrep -u postgres 2>/dev/null || true); do
        total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

for _ in $(seq "$RUNS"); do
    n=0
    for build in "$@"; do
        n=$((n + 1))
        before=$(server_ticks)
        # shellcheck disable=SC2086 # REPORT_ARGS is a list of arguments
        /usr/bin/time -f "%e %U %S" -o "$OUT.time" "$build" report $REPORT_ARGS \
            > "${TMPDIR:-/tmp}/report-ab-$n.json"
        after=$(server_ticks)
        echo "$n $(cat "$OUT.time") $((after - before))" >> "$OUT"
    done
done
rm -f "$OUT.time"

python3 - "$OUT" "$(getconf CLK_TCK)" "$@" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    n, wall, user, system, ticks = line.split()
    runs[int(n)].append((float(wall), float(user) + float(system), int(ticks)))
tick = 1.0 / int(sys.argv[2])
print("| build | wall | the command's CPU | PostgreSQL's CPU meanwhile |")
print("|---|---:|---:|---:|")
for n, build in enumerate(sys.argv[3:], start=1):
    got = runs[n]
    median = lambda i: statistics.median(r[i] for r in got)
    print(f"| {build} | {median(0):.3f} s | {median(1):.3f} s | {median(2) * tick:.3f} s |")
print(f"\nmedians of {len(runs[1])} runs each, the builds alternated")
PY
