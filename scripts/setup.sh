#!/usr/bin/env bash
# What building sluice needs beyond Rust, installed when missing: `cmake` (rdkafka builds
# librdkafka from source with it). With --tests, also what the test suite needs: the Kafka
# broker the Kafka tests run (tansu 0.6.0, `cargo install`ed into ~/.cargo/bin: 9-15 minutes
# the first time on 2 cores, nothing after).
#
#   scripts/setup.sh            the build's needs
#   scripts/setup.sh --tests    and the tests' broker
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cmake >/dev/null; then
    echo "setup.sh: installing cmake (rdkafka builds librdkafka with it)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake >&2
fi

if [ "${1:-}" = "--tests" ]; then
    tansu_version=0.6.0
    bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    if ! { [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$tansu_version"; }; then
        echo "setup.sh: installing tansu $tansu_version, the Kafka broker of the tests (9-15 minutes)" >&2
        cargo install tansu --version "$tansu_version" --locked --no-default-features \
            --features dynostore,libsql --quiet >&2
    fi
fi
