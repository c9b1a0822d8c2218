#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md with one command:
#
#   bench/run.sh            full run, about 11 minutes on 2 cores (a minute
#                           more the first time, seeding the databases)
#   bench/run.sh --quick    smaller sizes and fewer reps, about 2-3 minutes
#                           (the databases of both are cached in
#                           target/bench-data)
#
# Installs what is missing (Debian: age, sqlite3; pip: cryptography), builds
# the release binary and the bench harness, runs benches/export/, and
# writes the results table to target/bench/results.md (and results.json),
# printing it at the end. Other options are passed to the harness (see the
# header of benches/export/main.rs), e.g. --only seal,e2e or --reps 7.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v age >/dev/null 2>&1 || missing+=(age)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import cryptography' >/dev/null 2>&1; then
    echo "installing python cryptography" >&2
    python3 -m pip install --quiet cryptography
fi

# The harness runs the release binary (`case-export serve`) for the memory
# and load sections; `cargo bench` builds it in the same profile.
cargo bench --bench export --no-run
cargo bench --bench export -- "$@" >/dev/null

# The harness's --out moves the results.
results="${CARGO_TARGET_DIR:-target}/bench/results.md"
prev=""
for a in "$@"; do
    [ "$prev" = "--out" ] && results="$a/results.md"
    prev="$a"
done
cat "$results"
echo >&2
echo "results: $results" >&2
