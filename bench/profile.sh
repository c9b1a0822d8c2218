#!/usr/bin/env bash
# Profiles where the time of one export goes, with the bench harness's
# --profile mode (benches/export/). Writes text reports to
# target/bench/profile-*.txt.
#
#   bench/profile.sh [MIB] [N]     default: a 64 MiB snapshot, 3 exports
#
# Hardware counters are not available on this machine (`perf stat -e
# instructions true` says <not supported>), so this samples with the
# software cpu-clock event, which needs none; it sees user and kernel time
# of every thread. Where perf cannot record at all, it falls back to
# valgrind's callgrind on a small run (instruction counts, much slower).
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-64}
N=${2:-3}
OUT=target/bench
mkdir -p "$OUT"

exe=$(cargo bench --bench export --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "export" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$exe" ] || { echo "bench executable not found" >&2; exit 1; }

# The report pipelines end in `head`, which may cut perf off mid-write.
set +o pipefail

# Seed and calibrate outside the profile.
"$exe" --profile snapshot:"$MIB":1 >/dev/null

if perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
    for kind in e2e-discard e2e-dir; do
        data=$OUT/perf-$kind.data
        perf record -k CLOCK_MONOTONIC -e cpu-clock -F 1999 -o "$data" -- \
            "$exe" --profile "$kind:$MIB:$N" >"$OUT/$kind.windows" 2>"$OUT/$kind.log"
        # Only the streaming phase (first chunk to key): the snapshot build
        # before it is profiled on its own below.
        ranges=$(awk '/^STREAM_WINDOW/ {printf "%s%s,%s", sep, $2, $3; sep=" "}' "$OUT/$kind.windows")
        {
            echo "# $kind, $MIB MiB snapshot, $N exports: streaming phase only"
            grep -v '^STREAM' "$OUT/$kind.log" || true
            echo
            echo "## by thread"
            perf report -i "$data" --stdio --time "$ranges" --sort comm 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
            echo
            echo "## by symbol (self time)"
            perf report -i "$data" --stdio --time "$ranges" --sort comm,sym 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60
        } >"$OUT/profile-$kind.txt"
        echo "wrote $OUT/profile-$kind.txt"
    done
    data=$OUT/perf-snapshot.data
    perf record -e cpu-clock -F 1999 --call-graph dwarf,16384 -o "$data" -- \
        "$exe" --profile "snapshot:$MIB:$N" 2>"$OUT/snapshot.log" >/dev/null
    {
        echo "# build_snapshot, $MIB MiB snapshot, $N builds"
        cat "$OUT/snapshot.log"
        echo
        echo "## inclusive (children) share of samples"
        perf report -i "$data" --stdio --children --sort sym -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' |
            grep -E 'build_snapshot|copy_closure|copy_root|execute_batch|write_manifest|discover|sqlite3BtreeTableMoveto|sqlite3BtreeIndexMoveto|sqlite3BtreeInsert|balance$|readDbPage|unixRead|memdbRead|memdbWrite|pagerStress|vdbeSorterSort|pcache1Fetch|drop_in_place<case_export::snapshot' | head -40
        echo
        echo "## self time"
        perf report -i "$data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30
    } >"$OUT/profile-snapshot.txt"
    echo "wrote $OUT/profile-snapshot.txt"
else
    echo "perf cannot record here: callgrind on a small run instead" >&2
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
        "$exe" --profile "e2e-dir:8:1" >/dev/null 2>"$OUT/callgrind.log"
    callgrind_annotate --inclusive=yes "$OUT/callgrind.out" | head -80 >"$OUT/profile-callgrind.txt"
    echo "wrote $OUT/profile-callgrind.txt"
fi
