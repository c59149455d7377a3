#!/usr/bin/env bash
# The Kafka consumer-group source's figures (W1): one JSON line per measure.
#
#   scripts/bench-group.sh
#
# 1. `produce`: `loadgen run --kafka` fills a topic of PARTITIONS partitions with EVENTS W1
#    events at --rate max (one envelope a message; the generator's own report).
# 2. `tansu`: the broker's own consume rate for that topic, read whole by the tests'
#    independent client (confluent-kafka, tests/kafka_tool.py consume-rate).
# 3. `sluice`: one engine (the embedded default, 2 shards, files only) with a `[[source]]` on
#    the topic consumes it from the start: events/s from its first message until every
#    offset is committed (everything routed is stored by then), and the CPU its shards, its
#    group thread and librdkafka's threads took over the run, per event.
#
#   env EVENTS      events in the topic (default 200000)
#   env PARTITIONS  the input topic's partitions (default 12)
#   env BIN         where the release binaries are (default: target/release)
#   env PYTHON      a python3 with confluent-kafka (default: target/test-venv/bin/python3)
# The engine, the broker and the client share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release}
py=${PYTHON:-target/test-venv/bin/python3}
events=${EVENTS:-200000}
partitions=${PARTITIONS:-12}
work="target/bench-group/$(date +%s%N)"
mkdir -p "$work"
work=$(cd "$work" && pwd)
. scripts/tansu.sh
engine=
trap 'kill ${broker:-} ${engine:-} 2>/dev/null || true' EXIT
start_tansu "$work" 19093
"$py" tests/kafka_tool.py create "$brokers" "in:$partitions"

# 1.
"$bin/loadgen" run --quiet --kafka "$brokers" --topic in --rate max --events "$events" \
    > "$work/produce.json"
python3 -c "
import json; r = json.load(open('$work/produce.json'))
print(json.dumps({'measure': 'produce', 'workload': 'w1', 'events': r['events_acked'], 'events_per_sec': round(r['events_per_sec']), 'p99_us': r['latency_us']['p99']}))"

# 2.
"$py" tests/kafka_tool.py consume-rate "$brokers" in | \
    python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'measure': 'tansu', 'records': d['records'], 'records_per_sec': round(d['records_per_sec'])}))"

# 3.
sed -e "s|^dir = .*|dir = \"$work/data\"|" engine/src/default.toml > "$work/sluice.toml"
cat >> "$work/sluice.toml" <<EOF

[[source]]
kind = "kafka"
brokers = "$brokers"
topics = ["in"]
group_id = "bench"
EOF
metrics() { curl -s "http://127.0.0.1:9180/metrics"; }
sum() { metrics | awk -v n="$1" 'index($0, n "{") == 1 {s += $NF} END {printf "%d\n", s}'; }
"$bin/sluice" run --config "$work/sluice.toml" > "$work/engine.log" 2>&1 &
engine=$!
for _ in $(seq 300); do grep -qs ready "$work/engine.log" && break; sleep 0.1; done
while [ "$(sum sluice_source_messages_total)" -eq 0 ]; do sleep 0.02; done
t0=$(date +%s.%N)
while [ "$(sum sluice_source_committed_offset)" -lt "$events" ]; do sleep 0.1; done
t1=$(date +%s.%N)
# CPU each kind of thread took over the run (the engine started for it): the shards, the
# group thread, librdkafka's threads, the rest.
threads=$(python3 - "$engine" "$events" <<'PY'
import glob, json, os, sys
pid, events = sys.argv[1], int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
kinds = {}
for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
    text = open(stat).read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / tick
    kind = ("shards" if comm.startswith("sluice-shard") else
            "group" if comm.startswith("sluice-group") else
            "librdkafka" if comm.startswith("rdk:") else "other")
    kinds[kind] = kinds.get(kind, 0) + cpu
print(json.dumps({k: {"cpu_s": round(v, 2), "us_per_event": round(v * 1e6 / events, 1)}
                  for k, v in sorted(kinds.items())}))
PY
)
kill -INT "$engine"; wait "$engine" || true; engine=
python3 -c "
import json; s = $t1 - $t0
print(json.dumps({'measure': 'sluice', 'workload': 'w1', 'events': $events, 'seconds': round(s, 2), 'events_per_sec': round($events / s), 'threads': $threads}))"
