#!/usr/bin/env python3
"""Writes the seed corpora under Fuzz/corpus/<Target>/ from the repository's vector files.

Run from anywhere: python3 Fuzz/make-seeds.py. Deterministic; rerunning rewrites the same files.
Input layouts are documented beside each oracle (Tests/*/...FuzzOracle.swift).
"""
import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VECTORS = os.path.join(ROOT, "Vectors")


def load(name):
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80]
    with open(os.path.join(d, safe), "wb") as f:
        f.write(bytes(data))


def syrup_seeds():
    for case in load("syrup.json")["cases"]:
        write("FuzzSyrupDecode", "syrup-" + case["name"], bytes.fromhex(case["hex"]))
    doc = load("ocapn-examples.json")
    for e in doc["examples"]:
        if e["type"] in ("message", "locator", "captp-public-key", "captp-signature", "hints"):
            write("FuzzSyrupDecode", "ocapn-" + e["name"], bytes.fromhex(e["hex"]))
    with open(os.path.join(VECTORS, "external", "syrup", "zoo.bin"), "rb") as f:
        write("FuzzSyrupDecode", "zoo.bin", f.read())


def control_input(parts):
    """parts: list of (bytes, descriptors). Reads of at most 255 bytes; a part with a
    descriptor must be a single read (the marker)."""
    entries, stream = [], b""
    for data, fds in parts:
        if fds:
            assert len(data) <= 255
            entries.append((len(data), fds))
        else:
            for i in range(0, len(data), 255):
                entries.append((len(data[i:i + 255]), 0))
        stream += data
    assert len(entries) <= 15, "too many reads for one seed"
    return bytes([len(entries)]) + b"".join(bytes(e) for e in entries) + stream


def control_seeds():
    doc = load("ocapn-examples.json")
    ex = {e["name"]: bytes.fromhex(e["hex"]) for e in doc["examples"] if "hex" in e}
    marker = ex["msg4_scm_rights_dummy"]
    for name, data in ex.items():
        if name.startswith("msg") and name != "msg4_scm_rights_dummy":
            write("FuzzControlMessages", "one-" + name, b"\x00" + data)
    for r in doc["rejects"]:
        if r["type"] == "message":
            write("FuzzControlMessages", "reject-" + r["name"], b"\x00" + bytes.fromhex(r["hex"]))
    write("FuzzControlMessages", "server-sees-registration-A",
          control_input([(ex["msg1_uds_register_A"], 0), (ex["msg3_uds_signature_A_goblins"], 0)]))
    write("FuzzControlMessages", "peer-sees-server-response",
          control_input([(ex["msg2_uds_server_response_goblins"], 0)]))
    write("FuzzControlMessages", "introduction-A-to-S",
          control_input([(ex["msg4_uds_new_connection_A_to_S"], 0), (marker, 1)]))
    write("FuzzControlMessages", "registration-then-two-introductions",
          control_input([(ex["msg1_uds_register_A"], 0), (ex["msg3_uds_signature_A_goblins"], 0),
                         (ex["msg4_uds_new_connection_A_to_S"], 0), (marker, 1),
                         (ex["msg4_uds_new_connection_spec_hint_1"], 0), (marker, 1)]))
    write("FuzzControlMessages", "introduction-fd-on-record-read",
          control_input([(ex["msg5_uds_new_connection_S_to_B"][:200], 1), (ex["msg5_uds_new_connection_S_to_B"][200:] + marker, 0)]))


def mutate(data, m):
    data = bytearray(data)
    kind = m["kind"]
    if kind == "xor":
        data[m["offset"]] ^= m["mask"]
    elif kind == "replace":
        b = bytes.fromhex(m["bytes"])
        data[m["offset"]:m["offset"] + len(b)] = b
    elif kind == "truncate":
        data = data[:m.get("length", len(data) - 1)]
    elif kind == "append":
        data += bytes.fromhex(m.get("bytes", "00"))
    return bytes(data)


def handshake_seeds():
    doc = load("handshake.json")
    t = next(x for x in doc["transcripts"] if x["name"] == "alice-to-bob")
    msg1, msg2, auth = (bytes.fromhex(t[k]) for k in ("msg1", "msg2", "auth"))
    write("FuzzHandshake", "responder-msg1", b"\x00" + msg1)
    write("FuzzHandshake", "responder-msg1-auth", b"\x00" + msg1 + auth)
    write("FuzzHandshake", "responder-auth", b"\x01" + auth)
    write("FuzzHandshake", "initiator-msg2", b"\x02" + msg2)
    write("FuzzHandshake", "responder-msg1-late", b"\x80" + msg1)
    mode = {"msg1": (0, msg1), "auth": (1, auth), "msg2": (2, msg2)}
    for n in doc["negative"]:
        if n["base"] == "alice-to-bob" and n["target"] in mode and "from" not in n and "policy" not in n:
            m, base = mode[n["target"]]
            write("FuzzHandshake", "negative-" + n["name"], bytes([m]) + mutate(base, n["mutation"]))


def frame_seeds():
    def frame(ftype, body, flags=0):
        return bytes([flags, ftype, len(body) >> 8, len(body) & 255]) + body
    write("FuzzFrameReceiver", "one-message", frame(0, b"hello"))
    write("FuzzFrameReceiver", "fragments-then-close-eof",
          frame(4, b"ab") + frame(4, b"cd") + frame(0, b"e") + frame(1, b"") + b"\xc1")
    write("FuzzFrameReceiver", "large-fragment", frame(0, b"x" * 4000, 0x10))
    write("FuzzFrameReceiver", "auth-frame", frame(3, b"s" * 64))
    write("FuzzFrameReceiver", "rekey-frame", frame(2, b""))
    write("FuzzFrameReceiver", "corrupt-tag", frame(0, b"abc", 0x08))
    write("FuzzFrameReceiver", "raw-junk", b"\x40\x05\x00\x20abc")
    write("FuzzFrameReceiver", "short-len", b"\x80\x00\x05")
    write("FuzzFrameReceiver", "eof-mid-message", frame(4, b"abc") + b"\xc1")


def machine_seeds():
    # Operations of ChannelMachineFuzzOracle: (op | side << 4, argument) pairs.
    def ops(*pairs):
        return bytes(b for pair in pairs for b in pair)
    T = "FuzzChannelMachines"
    write(T, "handshake-then-close-a-first", ops((14, 0), (0, 3), (1, 0), (14, 0), (2, 0), (14, 0), (3, 0)))
    write(T, "close-both-at-once", ops((14, 0), (2, 0), (3, 0), (14, 0)))
    write(T, "byte-by-byte", ops((4, 0), (7, 0), (4, 0), (7, 0), (5, 0), (6, 0), (0, 200), (4, 9), (7, 0), (7, 5)))
    write(T, "close-crossing-unwritten", ops((14, 0), (3, 0), (5, 0), (2, 0), (6, 0), (14, 0)))
    write(T, "tamper-in-transit", ops((14, 0), (0, 1), (4, 0), (10 | 16, 5), (14, 0)))
    write(T, "abort-then-deadline", ops((14, 0), (2, 0), (9, 0), (11, 3), (14, 0)))
    write(T, "handshake-timeout", ops((4, 0), (12, 11), (14, 0)))
    write(T, "spurious-eof", ops((14, 0), (0, 4), (15 | 16, 0), (14, 0)))


if __name__ == "__main__":
    syrup_seeds()
    control_seeds()
    handshake_seeds()
    frame_seeds()
    machine_seeds()
