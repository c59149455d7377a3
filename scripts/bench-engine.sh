#!/usr/bin/env bash
# Runs `sluice run` on the embedded default config (W1, seed 1), or on another workload's
# (`WORKLOAD=w2|w3`: `loadgen fixtures`), with a fresh data directory,
# drives it with `loadgen run` for a while, and prints one line of figures: the generator's
# events/s and ack latency, each second's p99, and the engine's batch, write and sync latency
# from /metrics, and what the run wrote to the data directory's device.
#
#   scripts/bench-engine.sh RATE [SINKS_TOML] [LABEL]
#
#   RATE        events/s for the generator, or `max`
#   SINKS_TOML  replaces the default's `durability = ...` line under [sinks], e.g.
#               'durability = "none"' or 'durability = { interval_us = 1000 }\nprefill_bytes = 0'
#   env BIN     where the release binaries are (default: target/release)
#   env DUR     seconds to run (default 10)
#   env DATA    parent of the run's data directory (default: target/bench-engine); the
#               run's segments are kept until the next run starts, which deletes the earlier
#               runs' segments (a run writes 3-5 GB) and waits a few seconds, so that the
#               filesystem's trim of them is over before it measures
#   env CORES   the engine's cores, e.g. `0,1,2,3` (one shard each; default: one per core)
#   env ENGINE_PREFIX, LOADGEN_PREFIX   run each under e.g. `taskset -c 14,15`
#   env CONNS   generator connections (default 4)
#   env BATCH   envelopes per batch frame (the generator's default: 128)
#   env WINDOW  batch frames in flight per connection at `max` (the generator's default: 16)
#   env POOL    events the generator seals before the clock starts (its default: 1,048,576);
#               a run that outlasts them re-seals each frame before resending it
#   env WORKLOAD  w1 (the default config), w2 or w3 (that workload's fixtures and events)
#   env JSON    append the figures to this file as one JSON line
#   env EXTRA   TOML appended to the config (a `[[streams.NAME.sink]]`, say)
#
# It also prints how many cores the engine and the generator each kept busy while the clock
# ran, how much of it in the kernel, and how much in the engine's io_uring workers (their CPU
# time from /proc, sampled twice a second): a generator near the cores it was given is the
# limit, not the engine; workers busy mean writes the kernel could not start inline (on tmpfs,
# each of them: tuning.md, "Scaling across cores").
#
# Besides the whole run's rate it prints the second half's (from the generator's per-second
# timeline): a fresh engine zero-fills each stream's first segments until retention lets one
# go for reuse, so steady state takes a long run (`DUR=180`: tuning.md, "Steady state").
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:?usage: scripts/bench-engine.sh RATE [SINKS_TOML] [LABEL]}
sinks=${2:-'durability = { interval_us = 1000 }'}
label=${3:-run}
bin=${BIN:-target/release}
work=$(realpath -m "${DATA:-target/bench-engine}")
if compgen -G "$work/*/data" > /dev/null; then
    rm -rf "$work"/*/data
    sync
    sleep 3
fi
run="$work/$(date +%s%N)"
mkdir -p "$run"
workload=${WORKLOAD:-w1}
src=engine/src/default.toml
conf="$run/sluice.toml"
if [ "$workload" != w1 ]; then
    # The workload's own config and table files (`loadgen fixtures`); its table paths are
    # relative to the config, so the run's config is written beside them.
    "$bin/loadgen" fixtures --workload "$workload" --out "$run/fixtures" > "$run/fixtures.log" 2>&1 \
        || { cat "$run/fixtures.log"; exit 1; }
    src="$run/fixtures/sluice.toml"
    conf="$run/fixtures/sluice.toml"
fi
python3 - "$sinks" "$run/data" "$src" "$conf" "${CORES:-}" "${EXTRA:-}" <<'PY'
import re, sys
sinks, data, src, dst, cores, extra = sys.argv[1:]
s = open(src).read()
s = re.sub(r'(?m)^durability = .*$', sinks.replace('\\n', '\n'), s)
s = re.sub(r'(?m)^dir = .*$', 'dir = "%s"' % data, s)
if cores:
    s = re.sub(r'(?m)^shards = .*$', 'shards = %d\ncores = [%s]' % (len(cores.split(',')), cores), s)
if extra:
    # A stream with a network sink keeps its segments by the sink, not by retention.
    for stream in re.findall(r'\[\[streams\.([a-z0-9_-]+)\.sink\]\]', extra):
        s = re.sub(r'(\[streams\.%s\]\nformat = "\w+"\n)retain_bytes_max = .*\n' % re.escape(stream), r'\1', s)
    s += '\n' + extra.replace('\\n', '\n') + '\n'
open(dst, 'w').write(s)
PY
${ENGINE_PREFIX:-} "$bin/sluice" run --config "$conf" > "$run/engine.log" 2>&1 &
engine=$!
trap 'kill -INT $engine 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q ready "$run/engine.log" && break; sleep 0.1; done
grep -q ready "$run/engine.log" || { cat "$run/engine.log"; exit 1; }
# The device under the data directory, for the bytes the run wrote to it (none on tmpfs).
stat="/sys/class/block/$(basename "$(df --output=source "$work" | tail -1)")/stat"
sectors() { if [ -r "$stat" ]; then awk '{print $7}' "$stat"; else echo 0; fi; }
written_before=$(sectors)
${LOADGEN_PREFIX:-} "$bin/loadgen" run --connections "${CONNS:-4}" ${BATCH:+--batch "$BATCH"} ${WINDOW:+--window "$WINDOW"} ${POOL:+--pool "$POOL"} --rate "$rate" --workload "$workload" --duration "${DUR:-10}" \
    --report "$run/report.json" > "$run/loadgen.log" 2>&1 &
loadgen=$!
# The CPU time of both processes, twice a second, for how many cores each kept busy.
ticks() { awk '{print $14, $15}' "/proc/$1/stat" 2> /dev/null || echo - -; }
# The engine's io_uring workers (`iou-wrk-*` threads: the kernel hands them the writes it
# cannot start without blocking, such as every write to tmpfs), counted in its system time.
workers() { cat /proc/"$1"/task/*/stat 2> /dev/null | awk '$2 ~ /^\(iou-wrk/ {t += $14 + $15} END {print t + 0}'; }
while kill -0 $loadgen 2> /dev/null; do
    echo "$(date +%s.%N) $(ticks $engine) $(ticks $loadgen) $(workers $engine)"
    sleep 0.5
done > "$run/cpu.txt" &
wait $loadgen
written=$(( ($(sectors) - written_before) * 512 ))
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9180/metrics").read().decode())' \
    > "$run/metrics.txt"
kill -INT $engine
wait $engine || true
trap - EXIT
python3 - "$run" "$label" "$rate" "${JSON:-}" "${CORES:-}" "$written" <<'PY'
import json, os, re, sys
run, label, rate, out, cores, written = sys.argv[1:]
written = int(written)
r = json.load(open(f"{run}/report.json"))
l = r["latency_us"]
seconds = re.findall(r"p99\s+(\d+) µs", open(f"{run}/loadgen.log").read())
# The engine's latency histograms (seconds, cumulative buckets): p50 and p99 per shard in µs,
# interpolated within the bucket as Prometheus' histogram_quantile does.
buckets = {}
for line in open(f"{run}/metrics.txt"):
    x = re.match(r'sluice_(batch|write|sync)_latency_seconds_bucket\{shard="(\d+)",le="([^"]+)"\} (\d+)', line)
    if x:
        buckets.setdefault((x[1], x[2]), []).append((float(x[3]), int(x[4])))
def quantile(q, bs):
    total = bs[-1][1]
    if total == 0:
        return 0
    rank, lo, below = q * total, 0.0, 0
    for le, n in bs:
        if n >= rank:
            if le == float("inf"):
                return round(lo * 1e6)
            return round((lo + (le - lo) * (rank - below) / max(n - below, 1)) * 1e6)
        lo, below = le, n
    return round(lo * 1e6)
m = {}
for (k, shard), bs in sorted(buckets.items()):
    m.setdefault(k, []).append(f"shard {shard} p50 {quantile(0.5, bs)} p99 {quantile(0.99, bs)}")
print(f"{label}: rate {rate}: {r['events_per_sec']:.0f} events/s acked, {r['events_failed']} failed; "
      f"ack latency µs p50 {l['p50']} p90 {l['p90']} p99 {l['p99']} p999 {l['p999']}")
print(f"  p99 per second (µs): {' '.join(seconds)}")
# The second half of the run: past the zero-filling of each stream's first segments, when the
# run is long enough (tuning.md, "Steady state").
late = [t["events_per_sec"] for t in r.get("timeline", []) if t["t_s"] > r["duration_s"] / 2]
second_half = sum(late) / len(late) if late else 0
if late:
    print(f"  second half ({len(late)} s): {second_half:.0f} events/s acked")
for k in ("batch", "write", "sync"):
    print(f"  engine {k} latency µs: {', '.join(m.get(k, []))}")
# Cores each process kept busy over the clocked part of the run (its last `duration_s` seconds:
# the generator seals its pool before the clock starts). Each line of cpu.txt: the time, then
# user and system ticks of the engine, then of the generator, then the ticks of the engine's
# io_uring workers alive then (a worker idle for a while exits and its ticks leave the sum).
samples = []
for line in open(f"{run}/cpu.txt"):
    x = line.split()
    if len(x) == 6 and "-" not in x:
        samples.append((float(x[0]), *map(int, x[1:])))
busy = {}
if samples:
    inside = [x for x in samples if x[0] >= samples[-1][0] - r["duration_s"]]
    a, b = inside[0], inside[-1]
    if b[0] > a[0]:
        per = lambda i: round((b[i] - a[i]) / os.sysconf("SC_CLK_TCK") / (b[0] - a[0]), 2)
        busy = {"engine": round(per(1) + per(2), 2), "engine_system": per(2),
                "engine_io_workers": max(per(5), 0.0),
                "generator": round(per(3) + per(4), 2), "generator_system": per(4)}
        print(f"  cores busy ({b[0] - a[0]:.1f} s): engine {busy['engine']} "
              f"(system {busy['engine_system']}, io_uring workers "
              f"{busy['engine_io_workers']}), generator {busy['generator']} "
              f"(system {busy['generator_system']})")
if written:
    print(f"  device writes: {written / r['duration_s'] / 1e6:.0f} MB/s over the run, "
          f"{written / max(r['events_acked'], 1):.0f} bytes per event acked")
if out:
    with open(out, "a") as f:
        f.write(json.dumps({"label": label, "rate": rate, "cores": cores, "report": r,
                            "p99_per_second_us": [int(x) for x in seconds], "engine": m,
                            "device_bytes_written": written,
                            "events_per_sec_second_half": second_half,
                            "cores_busy": busy}) + "\n")
PY
