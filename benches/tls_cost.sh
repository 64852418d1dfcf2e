#!/usr/bin/env bash
# What TLS adds to a short command: `veris-jobs runs --limit 1` over the default
# sslmode (TLS when the server offers it) and with sslmode=disable, 15 times each,
# alternating, medians; psql's `select 1` the same way for scale.
#
#   cargo build --release && DATABASE=postgres://postgres@127.0.0.1:5432/DB benches/tls_cost.sh
# (DB: any database `veris-jobs migrate` has prepared)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/veris-jobs} DATABASE=${DATABASE:?set DATABASE to a migrated PostgreSQL URL} python3 - <<'PY'
import os, statistics, subprocess, time

binary, url = os.environ["BIN"], os.environ["DATABASE"]
plain = url + ("&" if "?" in url else "?") + "sslmode=disable"

def timed(args, env=None):
    start = time.perf_counter()
    subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start

def command(database):
    return timed([binary, "runs", "--limit", "1"], dict(os.environ, DATABASE_URL=database))

tls, without = [], []
for _ in range(15):
    tls.append(command(url))
    without.append(command(plain))
psql_tls = [timed(["psql", url + ("&" if "?" in url else "?") + "sslmode=require", "-Atc", "select 1"]) for _ in range(15)]
psql_plain = [timed(["psql", plain, "-Atc", "select 1"]) for _ in range(15)]
ms = lambda xs: statistics.median(xs) * 1000
print(f"veris-jobs runs --limit 1: {ms(tls):.1f} ms over TLS, {ms(without):.1f} ms without: {ms(tls) - ms(without):.1f} ms more")
print(f"psql select 1: {ms(psql_tls):.1f} ms over TLS, {ms(psql_plain):.1f} ms without: {ms(psql_tls) - ms(psql_plain):.1f} ms more")
PY
