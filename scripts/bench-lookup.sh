#!/usr/bin/env bash
# End-to-end events/s with the customer table in memory versus asked of a lookup service:
# writes the W1 fixtures, runs `sluice run` on `sluice.toml` (all tables local) or on
# `sluice-lookup.toml` (customers from `loadgen lookup-service --latency-us LATENCY`), drives
# it with `loadgen run --rate max`, and prints one line: events/s acked, ack latency, and the
# customer table's figures from /metrics. The run's directory (target/bench-lookup/N) keeps the
# logs, report and metrics; its data is deleted.
#
#   scripts/bench-lookup.sh local|LATENCY_US [LABEL]
#
#   env BIN     where the release binaries are (default: target/release)
#   env DUR     seconds to run (default 10)
#   env CONNS   generator connections (default 4)
#   env SINKS   replaces the `durability = ...` line (default: keep the fixtures' interval_us = 1000)
#   env EXTRA   lines added under [enrich.customer] in sluice-lookup.toml (e.g. 'budget_us = 5000')
#   env CORES   the engine's cores, e.g. `0,1` (one shard each; default: one per core)
#   env ENGINE_PREFIX, LOADGEN_PREFIX, SERVICE_PREFIX   run each under e.g. `taskset -c 4-7`
#   env JSON    append the figures to this file as one JSON line
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/bench-lookup.sh local|LATENCY_US [LABEL]}
label=${2:-$mode}
bin=${BIN:-target/release}
run="target/bench-lookup/$(date +%s%N)"
mkdir -p "$run"
"$bin/loadgen" fixtures --workload w1 --out "$run" 2> /dev/null
config="$run/sluice.toml"
service=
if [ "$mode" != local ]; then
    config="$run/sluice-lookup.toml"
    ${SERVICE_PREFIX:-} "$bin/loadgen" lookup-service --table "$run/customer.csv" --latency-us "$mode" \
        > "$run/service.log" 2>&1 &
    service=$!
fi
python3 - "$config" "${SINKS:-}" "${EXTRA:-}" "${CORES:-}" <<'PY'
import re, sys
path, sinks, extra, cores = sys.argv[1:]
s = open(path).read()
if cores:
    s = re.sub(r'(?m)^shards = .*$', 'shards = %d\ncores = [%s]' % (len(cores.split(',')), cores), s)
if sinks:
    s = re.sub(r'(?m)^durability = .*$', sinks, s)
if extra:
    s = s.replace('kind = "http"\n', 'kind = "http"\n' + extra.replace('\\n', '\n') + '\n')
open(path, 'w').write(s)
PY
${ENGINE_PREFIX:-} "$bin/sluice" run --config "$config" > "$run/engine.log" 2>&1 &
engine=$!
trap 'kill -INT $engine 2>/dev/null || true; [ -n "$service" ] && kill $service 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q ready "$run/engine.log" && break; sleep 0.1; done
grep -q ready "$run/engine.log" || { cat "$run/engine.log"; exit 1; }
${LOADGEN_PREFIX:-} "$bin/loadgen" run --connections "${CONNS:-4}" --rate max --workload w1 --duration "${DUR:-10}" \
    --report "$run/report.json" > "$run/loadgen.log" 2>&1
sleep 0.5
python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9180/metrics").read().decode())' \
    > "$run/metrics.txt"
kill -INT $engine
wait $engine || true
# The segments are gigabytes a run: keep the figures, not the data.
rm -rf "$run/data"
python3 - "$run" "$label" "${JSON:-}" <<'PY'
import json, re, sys
run, label, out = sys.argv[1:]
r = json.load(open(f"{run}/report.json"))
l = r["latency_us"]
c = {}
for line in open(f"{run}/metrics.txt"):
    x = re.match(r'sluice_enrich_(\w+)\{shard="\d+",table="customer"\} (\d+)', line)
    if x:
        c[x.group(1)] = c.get(x.group(1), 0) + int(x.group(2))
seen = c.get("cache_hits_total", 0) + c.get("cache_misses_total", 0)
fig = {
    "label": label,
    "events_per_sec": round(r["events_per_sec"]),
    "events_acked": r["events_acked"],
    "events_failed": r["events_failed"],
    "p50_us": l["p50"],
    "p99_us": l["p99"],
    "customer_hit_rate": round(c["cache_hits_total"] / seen, 3) if seen else None,
    "customer": c,
}
print(json.dumps(fig))
if out:
    open(out, "a").write(json.dumps(fig) + "\n")
PY
