#!/usr/bin/env python3
"""Checks vectors.json with an implementation independent of sluice's: Python's `cryptography`
(OpenSSL's AES-GCM) and a CRC32C written here from PROTOCOL.md. Run: python3 check_vectors.py"""
import ipaddress
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def rkyv_events(events: list) -> bytes:
    """An rkyv archive of the events, written from PROTOCOL.md section 5.2 alone."""
    out = bytearray()

    def align(n: int) -> None:
        out.extend(b"\0" * (-len(out) % n))

    def data(s: str):
        b = s.encode()
        if len(b) <= 8:
            return None
        pos = len(out)
        out.extend(b)
        return pos

    def string(s: str, pos, at: int) -> bytes:
        b = s.encode()
        if pos is None:
            return b + b"\xff" * (8 - len(b))
        n = len(b)
        return struct.pack("<Ii", (n & 0x3F) | 0x80 | ((n & ~0x3F) << 2), pos - at)

    placed = []
    for e in events:
        fields = {k: data(e[k]) for k in ("event_type", "app_version", "device_id")}
        attrs = [(k, data(k), v, data(v)) for k, v in e["attrs"].items()]
        align(4)
        attrs_pos = len(out)
        for k, kp, v, vp in attrs:
            at = len(out)
            out.extend(string(k, kp, at) + string(v, vp, at + 8))
        placed.append((e, fields, attrs_pos, len(attrs)))
    align(8)
    events_pos = len(out)
    for e, f, attrs_pos, n_attrs in placed:
        at = len(out)
        ip = ipaddress.ip_address(e["client_ip"])
        out.extend(struct.pack("<QQ", e["event_id"], e["ts_ms"]))
        out.extend(string(e["event_type"], f["event_type"], at + 16))
        out.extend(string(e["app_version"], f["app_version"], at + 24))
        out.extend(struct.pack("<I", e["device_type_id"]))
        out.extend(string(e["device_id"], f["device_id"], at + 36))
        out.extend(struct.pack("<4xQB", e["customer_id"], 0 if ip.version == 4 else 1))
        out.extend(ip.packed.ljust(16, b"\0") + b"\0" * 7)
        out.extend(struct.pack("<QiI", e["session_id"], attrs_pos - (at + 88), n_attrs))
    align(4)
    root = len(out)
    out.extend(struct.pack("<iI", events_pos - root, len(events)))
    return bytes(out)


def check_frame(name: str, frame: bytes, envelope: bytes) -> None:
    magic, version, kind, flags, seq, partition, count, total_len, crc = struct.unpack_from(
        "<4sBBHQIIII", frame, 0)
    assert magic == b"SLCF" and version == 1 and kind == 1 and flags == 0, name
    assert count == 1 and total_len == len(frame) and total_len % 16 == 0, name
    assert crc == crc32c(frame[:28] + b"\0\0\0\0" + frame[32:]), f"{name}: frame CRC32C"
    assert frame[32:] == envelope, f"{name}: the frame's body is the envelope"


def main() -> int:
    path = pathlib.Path(__file__).with_name("vectors.json")
    vectors = json.loads(path.read_text())
    valid = [v for v in vectors if "error" not in v]
    for v in valid:
        name = v["name"]
        h = {k: bytes.fromhex(v[k]) for k in v if k.endswith("_hex")}
        version, fmt, events, key_id, nonce, payload_len, pkey = struct.unpack_from(
            "<BBHI12sIQ", h["aad_hex"], 0)
        assert (version, key_id, nonce) == (1, v["key_id"], h["nonce_hex"]), name
        assert payload_len == len(h["plaintext_hex"]) and events == len(v["events"]), name
        assert pkey == v["partition_key"], name
        plaintext = AESGCM(h["key_hex"]).decrypt(h["nonce_hex"], h["ciphertext_hex"], h["aad_hex"])
        assert plaintext == h["plaintext_hex"], f"{name}: plaintext"
        sealed = h["aad_hex"] + h["ciphertext_hex"]
        assert h["envelope_hex"] == sealed + b"\0" * (-len(sealed) % 16), f"{name}: envelope"
        check_frame(name, h["frame_hex"], h["envelope_hex"])
        if fmt == 1:
            assert rkyv_events(v["events"]) == plaintext, f"{name}: rkyv written from PROTOCOL.md"
        if fmt == 2:
            assert json.loads(plaintext) == v["event_json"], f"{name}: event_json"
            doc = v["event_json"]
            assert (doc if isinstance(doc, list) else [doc]) == v["events"], f"{name}: events"
    invalid = [v for v in vectors if "error" in v]
    print(f"check_vectors: {len(valid)} valid vectors open with OpenSSL AES-GCM and their rkyv "
          f"payloads match a writer built from PROTOCOL.md "
          f"({len(invalid)} invalid vectors not checked here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
