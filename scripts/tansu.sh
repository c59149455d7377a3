# Sourced by the Kafka bench scripts: starts tansu 0.6.0 (scripts/setup.sh --tests installs
# it) on a free port from PORT up, storing in SQLite under WORK/broker, and waits until it
# listens. Sets `brokers` and `broker` (its pid); the caller's EXIT trap kills it.
#
#   start_tansu WORK PORT
start_tansu() {
    local work=$1 port=$2
    local tansu=${TANSU:-${CARGO_HOME:-$HOME/.cargo}/bin/tansu}
    # A port no earlier run's broker still holds.
    while (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null; do port=$((port + 1)); done
    brokers="127.0.0.1:$port"
    mkdir -p "$work/broker"
    # A relative storage path: tansu 0.6.0 refuses an absolute one.
    (cd "$work/broker" && exec "$tansu" broker --storage-engine sqlite://tansu.db \
        --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers") \
        > "$work/broker.log" 2>&1 &
    broker=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
}
