#!/usr/bin/env bash
# The whole test suite, on a fresh machine with nothing installed by hand: installs what the
# tests need when it is missing, runs every test binary, and ends with one line
# `tests: N passed, N failed` that totals them all.
#
#   scripts/test.sh            everything (what .ci/run runs after fmt and clippy)
#   scripts/test.sh -p sluice  extra arguments go to `cargo test`
#
# What it sets up, each only when missing:
# - cmake, for rdkafka's build, and tansu, the Kafka broker of the Kafka tests
#   (scripts/setup.sh --tests).
# - Python's `cryptography` (OpenSSL's AES-GCM, for protocol/testdata/check_vectors.py),
#   `maxminddb` (MaxMind's reader, the geo tests' oracle) and `confluent-kafka` (the Kafka
#   tests' independent client: they create topics and read them with it). When the `python3`
#   on PATH lacks them, they go into a virtual environment of our own, target/test-venv (no
#   system or user site packages are touched), whose `python3` the tests then find first on
#   PATH.
# - GeoLite2-City (scripts/fetch-geolite2.sh, into data/).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# Python modules, and the packages that bring them.
need=(cryptography maxminddb confluent_kafka)
packages=(cryptography maxminddb confluent-kafka)
missing() {
    local py=$1 m
    for m in "${need[@]}"; do
        "$py" -c "import $m" 2>/dev/null || return 0
    done
    return 1
}

venv=target/test-venv
if missing python3; then
    if [ ! -x "$venv/bin/python3" ]; then
        echo "test.sh: python3 lacks ${need[*]}: installing them into $venv" >&2
        python3 -m venv "$venv"
    fi
    if missing "$venv/bin/python3"; then
        "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "${packages[@]}"
    fi
    export PATH="$PWD/$venv/bin:$PATH"
fi
scripts/fetch-geolite2.sh >/dev/null

python3 protocol/testdata/check_vectors.py

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --locked --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Every test binary prints `test result: ok. N passed; N failed; ...`; total them.
passed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
failed=$(grep -E '^test result:' "$log" | grep -Eo '[0-9]+ failed' | awk '{s += $1} END {print s + 0}')
echo "tests: $passed passed, $failed failed"
if [ "$status" -eq 0 ] && [ "$failed" -ne 0 ]; then
    status=1
fi
exit "$status"
