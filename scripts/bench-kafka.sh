#!/usr/bin/env bash
# The Kafka sink's figures (W1): one JSON line per measure.
#
#   scripts/bench-kafka.sh
#
# 1. `tansu`: the broker's own produce rate, measured with the tests' independent client
#    (confluent-kafka, tests/kafka_tool.py: acks=all, idempotent, lz4, linger 5 ms) sending
#    records of the size of W1's JSON records.
# 2. `sluice`: sluice's segments into tansu. The engine on the embedded default first takes
#    EVENTS W1 events with no sink; then it restarts on the same data with a Kafka sink on
#    STREAM (W1's busiest, `playback`; JSON records), which delivers its segments from the
#    oldest: records/s from the first confirmation until the backlog is empty. The topic has
#    4 partitions, as the broker's own run's does.
#    Once per way in PRODUCERS, each with a sink of its own (its own cursor).
# 3. `ingest`: the cost on ingest, `scripts/bench-engine.sh max` with STREAM also going to
#    Kafka (once per way in PRODUCERS), and files only, back to back.
#
#   env EVENTS   events for the delivery run (default 300000)
#   env STREAM   the stream that goes to Kafka (default playback)
#   env PRODUCERS  the sink's ways to call librdkafka measured, each in 2 and 3 (default
#                "shard thread": tuning.md, `producer`)
#   env BIN      where the release binaries are (default: target/release)
#   env PYTHON   a python3 with confluent-kafka (default: target/test-venv/bin/python3)
# The engine, the broker and the client share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release}
py=${PYTHON:-target/test-venv/bin/python3}
events=${EVENTS:-300000}
stream=${STREAM:-playback}
producers=${PRODUCERS:-shard thread}
work="target/bench-kafka/$(date +%s%N)"
mkdir -p "$work"
work=$(cd "$work" && pwd)
. scripts/tansu.sh
engine=
trap 'kill ${broker:-} ${engine:-} 2>/dev/null || true' EXIT
start_tansu "$work" 19092
"$py" tests/kafka_tool.py create "$brokers" "$stream:4" raw:4

metrics() { curl -s "http://127.0.0.1:9180/metrics"; }
sum() { metrics | awk -v n="$1" 'index($0, n "{") == 1 {s += $NF} END {printf "%d\n", s}'; }
start_engine() {
    "$bin/sluice" run --config "$1" > "$work/engine.log" 2>&1 &
    engine=$!
    for _ in $(seq 300); do grep -qs ready "$work/engine.log" && break; sleep 0.1; done
}
stop_engine() { kill -INT "$engine"; wait "$engine" || true; engine=; }

# 2. Segments first, then a restart with a sink on every stream.
sed -e "s|^dir = .*|dir = \"$work/data\"|" engine/src/default.toml > "$work/files.toml"
start_engine "$work/files.toml"
"$bin/loadgen" run --quiet --rate max --workload w1 --events "$events" > "$work/load.json"
stop_engine
for producer in $producers; do
python3 - "$work/files.toml" "$work/kafka.toml" "$brokers" "$stream" "$producer" <<'PY'
import re, sys
src, dst, brokers, stream, producer = sys.argv[1:]
s = open(src).read()
s = re.sub(r'(\[streams\.%s\]\n)format = "\w+"\nretain_bytes_max = .*\n' % re.escape(stream),
           r'\1format = "json"\n', s)
# A sink of its own per way (its own cursor): each delivers the backlog from the oldest.
s += ('\n[[streams.%s.sink]]\nkind = "kafka"\nname = "%s"\nbrokers = "%s"\nproducer = "%s"\n'
      % (stream, producer, brokers, producer))
open(dst, 'w').write(s)
PY
start_engine "$work/kafka.toml"
while [ "$(sum sluice_sink_delivered_records_total)" -eq 0 ]; do sleep 0.05; done
t0=$(date +%s.%N)
first=$(sum sluice_sink_delivered_records_total)
while :; do
    sleep 0.2
    backlog=$(sum sluice_sink_backlog_bytes)
    [ "$backlog" -eq 0 ] && break
done
t1=$(date +%s.%N)
records=$(sum sluice_sink_delivered_records_total)
bytes=$(sum sluice_sink_delivered_bytes_total)
stop_engine
python3 -c "
import json; r, b, s = $records, $bytes, $t1 - $t0
print(json.dumps({'measure': 'sluice', 'producer': '$producer', 'workload': 'w1', 'stream': '$stream', 'events': $events, 'records': r, 'seconds': round(s, 2), 'records_per_sec': round((r - $first) / s), 'record_bytes_avg': round(b / r)}))"
done
size=$(( bytes / records ))

# 1. The broker's own produce rate, same client settings and record size.
"$py" tests/kafka_tool.py produce-rate "$brokers" raw "$records" "$size" | \
    python3 -c "import json,sys; d=json.load(sys.stdin); d['measure']='tansu'; print(json.dumps(d))"

# 3. The cost on ingest, back to back.
for label in files $producers; do
    extra=""
    [ "$label" != files ] && extra="[[streams.$stream.sink]]"$'\nkind = "kafka"\nbrokers = "'"$brokers"'"\nproducer = "'"$label"'"'
    EXTRA="$extra" JSON="$work/ingest.json" scripts/bench-engine.sh max \
        'durability = { interval_us = 1000 }' "ingest-$label" > /dev/null
done
python3 -c "
import json
for l in open('$work/ingest.json'):
    d = json.loads(l); r = d['report']
    print(json.dumps({'measure': 'ingest', 'label': d['label'], 'events_per_sec': round(r['events_per_sec']), 'p99_us': r['latency_us']['p99']}))"
