#!/usr/bin/env bash
# A soak: `sluice run` on the embedded default config (W1) under `loadgen run` at a share of
# the engine's measured maximum, for a long while, sampling the engine's RSS, the
# generator's p99 and its throughput every interval; ends with one JSON object that says
# whether each stayed flat. A bench script, not a test: the machine's noise is in it.
#
#   scripts/soak.sh              10 minutes at 70% of the maximum, sampled every 10 s
#   env DUR       seconds (default 600)
#   env SHARE     share of the maximum (default 0.7)
#   env EVERY     seconds per sample (default 10)
#   env BIN       where the release binaries are (default: target/release)
#   env DATA      parent of the run's data directory (default: target/soak)
#   env SINKS     replaces the default's `durability = ...` line (default: interval_us 1000)
#
# The maximum is measured first (`loadgen run --rate max`, 10 s). "Flat" means the last
# third's median is within 20% of the first third's (RSS: within 20% or 32 MB); a soak whose
# disk fills is not flat either, so each stream keeps 64 MiB (`retain_bytes_max`: the
# engine's retention) and the data directory's size is sampled too (`du`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release}
dur=${DUR:-600}
share=${SHARE:-0.7}
every=${EVERY:-10}
work=${DATA:-target/soak}
run="$work/$(date +%s%N)"
mkdir -p "$run"
run=$(cd "$run" && pwd)
python3 - "${SINKS:-durability = { interval_us = 1000 \}}" "$run/data" engine/src/default.toml "$run/sluice.toml" <<'PY'
import re, sys
sinks, data, src, dst = sys.argv[1:]
s = open(src).read()
s = re.sub(r'(?m)^durability = .*$', sinks.replace('\\}', '}'), s)
s = re.sub(r'(?m)^dir = .*$', 'dir = "%s"' % data, s)
s = re.sub(r'(?m)^segment_bytes_max = .*$', 'segment_bytes_max = 16777216', s)
s = re.sub(r'(?m)^retain_bytes_max = .*$', 'retain_bytes_max = 67108864', s)
open(dst, 'w').write(s)
PY
"$bin/sluice" run --config "$run/sluice.toml" > "$run/engine.log" 2>&1 &
engine=$!
trap 'kill -INT $engine 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -qs ready "$run/engine.log" && break; sleep 0.1; done
grep -q ready "$run/engine.log" || { cat "$run/engine.log"; exit 1; }
"$bin/loadgen" run --quiet --rate max --workload w1 --duration 10 --report "$run/max.json" > /dev/null
max=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["events_per_sec"])' "$run/max.json")
rate=$(python3 -c "print(int($max * $share))")
echo "soak: maximum $max events/s; running $dur s at $rate" >&2
"$bin/loadgen" run --rate "$rate" --workload w1 --duration "$dur" --report "$run/report.json" \
    > /dev/null 2> "$run/loadgen.log" &
gen=$!
: > "$run/samples.txt"
t0=$(date +%s)
while kill -0 $gen 2>/dev/null; do
    sleep "$every"
    rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$engine/status")
    disk=$(du -sb "$run/data" | cut -f1)
    echo "$(( $(date +%s) - t0 )) $rss $disk" >> "$run/samples.txt"
done
wait $gen || true
python3 - "$run" "$every" "$rate" "$dur" <<'PY'
import json, re, statistics, sys
run, every, rate, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lines = open(f"{run}/loadgen.log").read().splitlines()
per_s = [(int(m[1]), int(m[2])) for m in (re.search(r"(\d+) events/s .* p99\s+(\d+) µs", l) for l in lines) if m]
samples = [l.split() for l in open(f"{run}/samples.txt")]
rss = [int(x[1]) for x in samples]
disk = [int(x[2]) for x in samples]
def windows(xs, k):
    return [xs[i:i + k] for i in range(0, len(xs) - k + 1, k)]
tput = [statistics.mean(x for x, _ in w) for w in windows(per_s, every)]
p99 = [max(p for _, p in w) for w in windows(per_s, every)]
def flat(xs, slack=0.2, abs_slack=0):
    if len(xs) < 3:
        return None
    n = max(1, len(xs) // 3)
    a, b = statistics.median(xs[:n]), statistics.median(xs[-n:])
    return abs(b - a) <= max(slack * a, abs_slack)
out = {
    "rate": rate, "seconds": dur, "sample_s": every,
    "events_per_sec": [round(x) for x in tput],
    "p99_us": p99,
    "rss_mb": [r >> 20 for r in rss],
    "disk_mb": [d >> 20 for d in disk],
    "flat": {"events_per_sec": flat(tput), "p99_us": flat(p99, 0.5), "rss": flat(rss, 0.2, 32 << 20),
             "disk": flat(disk, 0.2, 64 << 20)},
    "report": json.load(open(f"{run}/report.json")),
}
print(json.dumps(out))
PY
