#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/corpus/<target>/ (standard library
only). The fuzzers grow these corpora; the grown, minimized corpora are committed too."""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
KINDS = ["organization.yaml", "systems.yaml", "contracts.yaml", "assets", "grants", "tests"]


def put(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def policy_files():
    """One corpus per bundle file kind (targets policy_organization … policy_tests)."""
    for base in [ROOT / "tests/fixtures/base", ROOT / "policies"]:
        for kind in KINDS:
            p = base / kind
            files = [p] if p.is_file() else sorted(p.glob("*.yaml")) if p.is_dir() else []
            target = "policy_" + kind.removesuffix(".yaml")
            for f in files[:3]:
                put(target, f.read_bytes())


def b64(data):
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=")


def token():
    far = 4102444800  # 2100-01-01
    claims = [
        {"iss": "fuzz-iss", "aud": "fuzz-aud", "sub": "e1010", "section": "shimin", "amr": ["pwd", "fpt"], "exp": far},
        {"iss": "fuzz-iss", "aud": "fuzz-aud", "sub": "x-1", "kind": "contractor", "contract": "k-1", "exp": far, "nbf": 0},
        {"iss": "fuzz-iss", "aud": ["fuzz-aud", "x"], "sub": "a9001", "roles": ["auditor", "ciso"], "exp": far},
        {"iss": "fuzz-iss", "aud": "fuzz-aud", "sub": "e\u202e1", "exp": far},
    ]
    for c in claims:
        put("token", b"\x01" + json.dumps(c, ensure_ascii=False).encode())
    header = b64(b'{"alg":"EdDSA","typ":"JWT","kid":"k1"}')
    for c in claims:
        payload = b64(json.dumps(c).encode())
        put("token", b"\x00" + header + b"." + payload + b"." + b64(bytes(64)))
    put("token", b"\x00" + b64(b'{"alg":"none"}') + b"." + b64(b"{}") + b".")
    put("token", b"\x00" + b64(b'{"alg":"HS256","kid":"k1"}') + b"." + b64(b"{}") + b"." + b64(bytes(32)))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag, data):
    return varint(tag << 3 | 2) + varint(len(data)) + data


def check_request():
    env = varint(1 << 3 | 0) + b"\x01" + field(2, "jumin-kiroku".encode())
    for asset, action in [("juki-main", "read"), ("juki-tokei", "print"), ("jinji-kyuyo", "update"), ("zei-kazei", "export")]:
        msg = field(1, b"tok") + field(2, asset.encode()) + field(3, action.encode()) + field(4, env) + field(5, b"req-1")
        put("check_request", msg)
        item = field(1, asset.encode()) + field(2, action.encode()) + field(3, env)
        put("check_request", field(1, b"tok") + field(2, item) + field(2, item))


def log_record():
    record = json.dumps(
        {"seq": 1, "id": "01936b1e-7c3a-7d2e-9f00-0123456789ab", "time_us": 1780000000000000, "kind": "decision",
         "system": "juki", "subject": {"sub": "=cmd|' /C calc'!A0", "section": "shimin", "kind": "staff"},
         "asset": {"id": "juki-main", "tier": "secret"}, "action": "read", "decision": "deny", "reason": "no_permission"},
        separators=(",", ":"), sort_keys=True)
    header = json.dumps({"sekimori_archive": 1, "from_seq": 1, "to_seq": 1, "prev_hash": "00" * 32})
    h = hashlib.sha256(bytes(32) + record.encode()).hexdigest()
    trailer = json.dumps({"checkpoint": {"seq": 1, "hash": h, "time_us": 1780000000000000, "key_id": "k", "signature": "00" * 64}})
    put("log_record", "\n".join([header, record, trailer]).encode())
    put("log_record", "\n".join([header, trailer]).encode())
    put("log_record", record.encode())


if __name__ == "__main__":
    policy_files()
    token()
    check_request()
    log_record()
    for t in sorted(CORPUS.iterdir()):
        print(t.name, len(list(t.iterdir())))
