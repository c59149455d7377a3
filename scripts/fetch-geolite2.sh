#!/usr/bin/env bash
# Fetches the GeoLite2-City database (2018) that geo tests and benches use, when missing:
# the copy shipped in the PyPI sdist `maxminddb-geolite2==2018.703` (data by MaxMind, CC BY-SA
# 4.0). Never committed: it lands in data/ (ignored by git), or at $SLUICE_GEOLITE2.
#
#   scripts/fetch-geolite2.sh        prints the database's path
set -euo pipefail
cd "$(dirname "$0")/.."
out=${SLUICE_GEOLITE2:-data/GeoLite2-City.mmdb}
if [ -s "$out" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$tmp" "maxminddb-geolite2==2018.703" >&2
tar -xzf "$tmp"/maxminddb-geolite2-2018.703.tar.gz -C "$tmp" \
    maxminddb-geolite2-2018.703/_maxminddb_geolite2/GeoLite2-City.mmdb
mv "$tmp"/maxminddb-geolite2-2018.703/_maxminddb_geolite2/GeoLite2-City.mmdb "$out.part.$$"
mv "$out.part.$$" "$out"
echo "$out"
