#!/usr/bin/env bash
# Compares two builds side by side: engine A (from A_DIR) and engine B (from B_DIR) run at
# the same time on the same cores, each on the embedded default config (W1, 2 shards) with
# its own ports and data directory, each driven at `--rate max` by its own generator. Over
# the same window of each run it prints each engine's events/s and CPU per event, each
# generator's CPU per event, and B's over A's. On a shared, noisy host the slow spells fall
# on both at once, so their ratio is steadier than single runs taken in turn: two copies of
# one build measured 1.000, 0.986 and 0.997 (tuning.md, "Comparing two builds").
#
#   scripts/bench-pair.sh A_DIR B_DIR
#
#   A_DIR, B_DIR  where each build's `sluice` and `loadgen` are (e.g. a copy of
#                 target/release taken before a change, and target/release)
#   env REPS      runs (default 3)
#   env DUR       seconds each generator runs (default 50)
#   env FROM, WIN the window: from FROM s into the run, for WIN s (default 22 and 22: a
#                 fresh engine zero-fills its first segments, so no window is steady state;
#                 both engines are in the same phase)
#   env CONNS     connections per generator (default 4)
#   env DATA      parent of the two data directories (default target/bench-pair); each
#                 engine writes up to about 16 GB a run, deleted after it
#   env JSON      append each run's figures to this file as one JSON line
set -euo pipefail
cd "$(dirname "$0")/.."
a_dir=$(realpath "${1:?usage: scripts/bench-pair.sh A_DIR B_DIR}")
b_dir=$(realpath "${2:?usage: scripts/bench-pair.sh A_DIR B_DIR}")
for d in "$a_dir" "$b_dir"; do
    [ -x "$d/sluice" ] && [ -x "$d/loadgen" ] || { echo "no sluice and loadgen in $d" >&2; exit 1; }
done
work=$(realpath -m "${DATA:-target/bench-pair}")
dur=${DUR:-50}
from=${FROM:-22}
win=${WIN:-22}
[ $((from + win + 3)) -le "$dur" ] || { echo "FROM + WIN must end before DUR" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work/a" "$work/b"
# Each engine's config: the default with its own ports and data directory.
config() {
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import re, sys
port, admin, data, dst = sys.argv[1:]
s = open("engine/src/default.toml").read()
for old, new in [('shared = "127.0.0.1:7400"', f'shared = "127.0.0.1:{port}"'),
                 ("shard_port_base = 7401", f"shard_port_base = {int(port) + 1}"),
                 ('admin = "127.0.0.1:9180"', f'admin = "127.0.0.1:{admin}"')]:
    assert old in s, old
    s = s.replace(old, new)
s = re.sub(r'(?m)^dir = .*$', f'dir = "{data}"', s)
open(dst, "w").write(s)
PY
}
config 7400 9180 "$work/a/data" "$work/a/sluice.toml"
config 7500 9280 "$work/b/data" "$work/b/sluice.toml"
events() {
    python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(sum(int(float(l.split()[-1])) for l in text.splitlines() if l.startswith("sluice_events_total")))' "$1"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
pids=()
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' EXIT
for rep in $(seq "${REPS:-3}"); do
    rm -rf "$work/a/data" "$work/b/data"
    "$a_dir/sluice" run --config "$work/a/sluice.toml" > "$work/a/engine.log" 2>&1 &
    ea=$!
    "$b_dir/sluice" run --config "$work/b/sluice.toml" > "$work/b/engine.log" 2>&1 &
    eb=$!
    pids=("$ea" "$eb")
    for side in a b; do
        for _ in $(seq 300); do grep -q ready "$work/$side/engine.log" && break; sleep 0.1; done
        grep -q ready "$work/$side/engine.log" || { cat "$work/$side/engine.log"; exit 1; }
    done
    "$a_dir/loadgen" run --target 127.0.0.1:7400 --connections "${CONNS:-4}" --rate max \
        --workload w1 --duration "$dur" > "$work/a/loadgen.log" 2>&1 &
    la=$!
    "$b_dir/loadgen" run --target 127.0.0.1:7500 --connections "${CONNS:-4}" --rate max \
        --workload w1 --duration "$dur" > "$work/b/loadgen.log" 2>&1 &
    lb=$!
    pids=("$ea" "$eb" "$la" "$lb")
    sleep "$from"
    before="$(events 9180) $(events 9280) $(ticks "$ea") $(ticks "$eb") $(ticks "$la") $(ticks "$lb")"
    sleep "$win"
    after="$(events 9180) $(events 9280) $(ticks "$ea") $(ticks "$eb") $(ticks "$la") $(ticks "$lb")"
    wait "$la" "$lb" || true
    kill -INT "$ea" "$eb"
    wait "$ea" "$eb" || true
    pids=()
    python3 - "$rep" "$win" "$before" "$after" "$(getconf CLK_TCK)" "${JSON:-}" <<'PY'
import json, sys
rep, win, before, after, hz, out = sys.argv[1:]
d = [int(y) - int(x) for x, y in zip(before.split(), after.split())]
ev_a, ev_b, ea, eb, la, lb = d
us = lambda ticks, ev: ticks / int(hz) * 1e6 / max(ev, 1)
r = {"run": int(rep), "window_s": int(win),
     "a": {"events_per_sec": ev_a / int(win), "engine_us_per_event": us(ea, ev_a),
           "loadgen_us_per_event": us(la, ev_a)},
     "b": {"events_per_sec": ev_b / int(win), "engine_us_per_event": us(eb, ev_b),
           "loadgen_us_per_event": us(lb, ev_b)}}
r["b_over_a"] = {k: r["b"][k] / r["a"][k] for k in r["a"]}
q = r["b_over_a"]
print(f"run {rep}: A {r['a']['events_per_sec']:,.0f} events/s, engine {r['a']['engine_us_per_event']:.3f} µs "
      f"and generator {r['a']['loadgen_us_per_event']:.3f} µs an event; "
      f"B {r['b']['events_per_sec']:,.0f}, {r['b']['engine_us_per_event']:.3f}, {r['b']['loadgen_us_per_event']:.3f}; "
      f"B/A: events/s {q['events_per_sec']:.3f}, engine CPU an event {q['engine_us_per_event']:.3f}, "
      f"generator CPU an event {q['loadgen_us_per_event']:.3f}")
if out:
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
PY
done
rm -rf "$work/a/data" "$work/b/data"
