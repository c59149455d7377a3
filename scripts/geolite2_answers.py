#!/usr/bin/env python3
"""MaxMind's own reader's answers, to check sluice's against: reads addresses (one per line)
on stdin and prints, for each, `ip<TAB>country<TAB>region<TAB>city<TAB>asn` as sluice reads
a record (region = country-subdivision ISO 3166-2 code; empty where the record has none).

    python3 scripts/geolite2_answers.py DB < addresses
"""
import sys

import maxminddb


def main():
    reader = maxminddb.open_database(sys.argv[1])
    for line in sys.stdin:
        ip = line.strip()
        if not ip:
            continue
        rec = reader.get(ip) or {}
        country = (rec.get("country") or {}).get("iso_code") or ""
        subs = rec.get("subdivisions") or []
        sub = subs[0].get("iso_code") if subs else None
        region = f"{country}-{sub}" if sub and country else ""
        city = ((rec.get("city") or {}).get("names") or {}).get("en") or ""
        asn = rec.get("autonomous_system_number") or 0
        found = "1" if rec else "0"
        print(f"{ip}\t{found}\t{country}\t{region}\t{city}\t{asn}")


if __name__ == "__main__":
    main()
