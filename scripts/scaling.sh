#!/usr/bin/env bash
# Shard scaling on a many-core host, W1, one run each:
#  - `sluice run` with 1, 2, 4, 8 and 14 shards (one core each, from core 0 up) against
#    `loadgen run --rate max` held to the last two cores, and 12 shards with the generator on
#    the last four (each line says how many cores the engine and the generator kept busy: at
#    14 shards the generator's two can be the limit);
#  - before each run, as many copies of the in-process pipeline as it has shards
#    (`pipeline-rate --workload w1`, one on each of the same cores, no I/O, no generator),
#    when `$BIN/pipeline-rate` is there: what the host's cores give plain CPU work when that
#    many work at once, against which to read the shards' efficiency (a lent VM's vCPUs can
#    run one copy at 55-75% of full speed while the others run at full);
#  - 2 shards on cores 0 and 1, then on 0 and nproc/2: a hint of whether the host's cores are
#    whole or hardware threads sharing one (a lent VM's lscpu may not say); single runs on a
#    lent VM vary by up to 20%, so repeat them before reading much into a difference;
#  - 2 shards at 250,000 events/s open loop, the generator on cores of its own, then on the
#    engine's.
# After the shard counts it prints each one's efficiency (its rate a shard against one
# shard's) beside the copies' (each copy's rate against one copy's alone).
# Durability `interval_us = 1000` unless a line says otherwise. Every line of figures is also
# appended to $OUT/scaling.jsonl, with the host's description in $OUT/host.txt.
#
#   BIN=target/release OUT=/tmp/scaling scripts/scaling.sh
#
#   env BIN     where the release binaries are (default: target/release)
#   env OUT     where the report goes (default: target/scaling)
#   env DUR     seconds per run (default 5)
#   env SHARDS  the runs: N shards against the generator on the last two cores, or N/G on the
#               last G (default: "1 2 4 8 14 12/4")
#   env SINKS   the scaling runs' durability line (see scripts/bench-engine.sh)
#   env COPIES  0 skips the in-process copies
#   env PAIRS   0 skips the two 2-shard runs on chosen cores
#   env LATENCY 0 skips the 250,000 events/s runs
#   env DATA    where the runs' data go (default: target/scaling-data)
set -uo pipefail
cd "$(dirname "$0")/.."
export BIN=${BIN:-target/release} DUR=${DUR:-5}
out=${OUT:-target/scaling}
mkdir -p "$out"
export JSON="$out/scaling.jsonl" DATA=${DATA:-$PWD/target/scaling-data}
ncpu=$(nproc)
lg=$((ncpu - 2)),$((ncpu - 1))
{
    uname -a
    nproc
    grep -m1 'model name' /proc/cpuinfo
    df -T "$(dirname "$DATA")" | tail -1
    ulimit -l
    lscpu | grep -E '^(Thread|Core|Socket|Model name|L[23] cache)'
    grep -H . /sys/devices/system/cpu/cpu*/topology/thread_siblings_list
} > "$out/host.txt" 2>&1
cat "$out/host.txt"
ok() { "$BIN/sluice" check > /dev/null 2>&1 || { echo "sluice check failed"; return 1; }; }
ok || exit 1
interval=${SINKS:-'durability = { interval_us = 1000 }'}
run() { # LABEL RATE CORES LOADGEN_CORES CONNS [SINKS]
    local pin=""
    command -v taskset > /dev/null && pin="taskset -c $4"
    CORES=$3 LOADGEN_PREFIX="$pin" CONNS=$5 \
        scripts/bench-engine.sh "$2" "${6:-$interval}" "$1" 2>&1 \
        | tee -a "$out/log.txt"
    rm -rf "$DATA"
}
copies() { # N: N copies of the in-process pipeline at once, on cores 0..N-1
    [ "${COPIES:-1}" = 1 ] && [ -x "$BIN/pipeline-rate" ] || return 0
    local tmp c
    tmp=$(mktemp -d)
    for c in $(seq 0 $(($1 - 1))); do
        taskset -c "$c" "$BIN/pipeline-rate" --workload w1 --seconds 3 > "$tmp/$c.json" 2>&1 &
    done
    wait
    python3 - "$1" "$tmp" "$JSON" <<'PY' 2>&1 | tee -a "$out/log.txt"
import json, sys
n, tmp, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
each = [round(json.load(open(f"{tmp}/{c}.json"))["events_per_sec"]) for c in range(n)]
mean = sum(each) / n
print(f"copies-{n}: in-process pipeline, {n} at once: mean {mean:.0f} events/s, each {each}")
with open(out, "a") as f:
    f.write(json.dumps({"label": f"copies-{n}", "events_per_sec_each": each,
                        "events_per_sec_mean": mean}) + "\n")
PY
    rm -rf "$tmp"
}
for spec in ${SHARDS:-1 2 4 8 14 12/4}; do
    n=${spec%/*} g=2
    [ "$spec" = "$n" ] || g=${spec#*/}
    [ $((n + g)) -le "$ncpu" ] || continue
    cores=$(seq -s, 0 $((n - 1)))
    conns=$((n > 4 ? n : 4))
    label="shards-$n"
    [ "$g" = 2 ] || label="shards-$n-generator-$g"
    copies "$n"
    run "$label" max "$cores" "$(seq -s, $((ncpu - g)) $((ncpu - 1)))" "$conns"
done
# Each shard count's rate a shard against one shard's, beside the copies' against one copy's.
python3 - "$JSON" <<'PY' | tee -a "$out/log.txt"
import json, re, sys
shards, copies = {}, {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    x = re.fullmatch(r"(shards|copies)-(\d+)(-generator-(\d+))?", d["label"])
    if x and x[1] == "shards":
        shards[(int(x[2]), int(x[4] or 2))] = d["report"]["events_per_sec"] / int(x[2])
    elif x:
        copies[int(x[2])] = d["events_per_sec_mean"]
one = shards.get((1, 2))
for n, g in sorted(shards):
    line = f"efficiency, {n} shard{'s' * (n > 1)}" + (f" (generator on {g})" if g != 2 else "")
    line += f": {100 * shards[(n, g)] / (one or shards[(n, g)]):.0f}% a shard of one shard"
    if n in copies and 1 in copies:
        line += f"; {n} cop{'ies' if n > 1 else 'y'}: {100 * copies[n] / copies[1]:.0f}% each of one copy"
    print(line)
PY
if [ "${PAIRS:-1}" = 1 ]; then
    for second in 1 $((ncpu / 2)); do
        run "pair-0-$second" max "0,$second" "$lg" 4
    done
fi
[ "${LATENCY:-1}" = 1 ] || exit 0
run "2-shards-250k-own-cores" 250000 0,1 "$lg" 4
run "2-shards-250k-own-cores-none" 250000 0,1 "$lg" 4 'durability = "none"'
run "2-shards-250k-shared-cores" 250000 0,1 0,1 4
