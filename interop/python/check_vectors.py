#!/usr/bin/env python3
"""Replays Vectors/handshake.json with the independent Python UDS-HS1 (uds_hs1.py).

Follows Vectors/handshake.md: every transcript must be reproduced byte for byte (msg1, msg2,
AUTH, HH, session id, both keys, every transport send) and delivered by the other side; every
negative case must fail with exactly its reason code. Exit status 0 only if all pass.

Usage: check_vectors.py [path/to/handshake.json]
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uds_hs1 as hs  # noqa: E402


def h(text):
    return bytes.fromhex(text)


class Mismatch(Exception):
    pass


def expect_equal(what, got, want):
    if got != want:
        raise Mismatch(f"{what}: got {got.hex()} want {want.hex()}")


def handshake(t):
    ini_id, res_id = hs.Identity(h(t["initiator_seed"])), hs.Identity(h(t["responder_seed"]))
    expect_equal("initiator_public", ini_id.public, h(t["initiator_public"]))
    expect_equal("responder_public", res_id.public, h(t["responder_public"]))
    ini = hs.Initiator(ini_id, res_id.public, h(t["initiator_ephemeral"]))
    expect_equal("msg1", ini.msg1, h(t["msg1"]))
    res = hs.Responder(res_id, ini_id.public, h(t["responder_ephemeral"]))
    msg2 = res.read_msg1(ini.msg1)
    expect_equal("msg2", msg2, h(t["msg2"]))
    auth, ini_result = ini.read_msg2(msg2)
    expect_equal("auth", auth, h(t["auth"]))
    res_result, rest = res.read_auth(auth)
    assert rest == b""
    for name, result in (("initiator", ini_result), ("responder", res_result)):
        expect_equal(f"{name} handshake_hash", result.handshake_hash, h(t["handshake_hash"]))
        expect_equal(f"{name} session_id", result.session_id, h(t["session_id"]))
        expect_equal(f"{name} key_ir", result.key_ir, h(t["key_ir"]))
        expect_equal(f"{name} key_ri", result.key_ri, h(t["key_ri"]))
    expect_equal("initiator sees", ini_result.peer, res_id.public)
    expect_equal("responder sees", res_result.peer, ini_id.public)
    return ini_id, res_id, ini_result, res_result


def check_transcript(t):
    _, _, ini_result, res_result = handshake(t)
    channels = {
        "initiator": ini_result.channel(max_fragment=t["max_fragment_size"]),
        "responder": res_result.channel(max_fragment=t["max_fragment_size"]),
    }
    other = {"initiator": "responder", "responder": "initiator"}
    for index, entry in enumerate(t["transport"]):
        sender, receiver = channels[entry["from"]], channels[other[entry["from"]]]
        if entry["type"] == "message":
            frames = sender.seal(h(entry["message"]))
            expect_equal(f"transport[{index}] frames", frames, h(entry["frames"]))
            events = receiver.feed(frames)
            if events != [("message", h(entry["message"]))]:
                raise Mismatch(f"transport[{index}] delivered {events}")
        else:
            frames = sender.seal_close()
            expect_equal(f"transport[{index}] close", frames, h(entry["frames"]))
            if receiver.feed(frames) != [("close",)]:
                raise Mismatch(f"transport[{index}] close not delivered")
    for channel in channels.values():
        channel.eof()  # both closed cleanly


def mutate(data, mutation):
    kind = mutation["kind"]
    data = bytearray(data)
    if kind == "none":
        pass
    elif kind == "xor":
        data[mutation["offset"]] ^= mutation["mask"]
    elif kind == "replace":
        new = h(mutation["bytes"])
        data[mutation["offset"]:mutation["offset"] + len(new)] = new
    elif kind == "truncate":
        del data[mutation["length"]:]
    elif kind == "append":
        data += h(mutation["bytes"])
    elif kind == "substitute":
        data = bytearray(h(mutation["bytes"]))
    else:
        raise Mismatch(f"unknown mutation {kind}")
    return bytes(data)


def run_negative(case, transcripts):
    """Returns the reason code the receiver failed with, or None if it accepted the bytes."""
    t = transcripts[case["base"]]
    ini_id, res_id = hs.Identity(h(t["initiator_seed"])), hs.Identity(h(t["responder_seed"]))
    announced = h(case["from"]) if "from" in case else ini_id.public
    policy = (lambda key: False) if case.get("policy") == "deny" else None
    target = case["target"]
    try:
        if target == "msg1":
            res = hs.Responder(res_id, announced, h(t["responder_ephemeral"]), policy)
            data = mutate(h(t["msg1"]), case["mutation"])
            res.read_msg1(data)
            # Bytes behind msg1 start AUTH; then end of file.
            res.read_auth(data[hs.MSG1_LEN:])
            return None
        if target == "msg2":
            ini = hs.Initiator(ini_id, res_id.public, h(t["initiator_ephemeral"]))
            ini.read_msg2(mutate(h(t["msg2"]), case["mutation"]))
            return None
        if target == "auth":
            res = hs.Responder(res_id, announced, h(t["responder_ephemeral"]), policy)
            res.read_msg1(h(t["msg1"]))
            result, rest = res.read_auth(mutate(h(t["auth"]), case["mutation"]))
            channel = result.channel()
            channel.feed(rest)
            channel.eof()
            return None
        if target in ("transport-i2r", "transport-r2i"):
            _, _, ini_result, res_result = handshake(t)
            sender = "initiator" if target == "transport-i2r" else "responder"
            stream = b"".join(h(e["frames"]) for e in t["transport"] if e["from"] == sender)
            receiver = (res_result if sender == "initiator" else ini_result).channel()
            receiver.feed(mutate(stream, case["mutation"]))
            receiver.eof()
            return None
        raise Mismatch(f"unknown target {target}")
    except hs.HandshakeError as error:
        return error.code


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        here, "..", "..", "Vectors", "handshake.json")
    with open(path) as f:
        vectors = json.load(f)
    if vectors.get("format") != "ocapn-uds/handshake/v1":
        print(f"FAIL unexpected format {vectors.get('format')!r}")
        return 1
    transcripts = {t["name"]: t for t in vectors["transcripts"]}
    failures = 0
    for t in vectors["transcripts"]:
        try:
            check_transcript(t)
            print(f"ok transcript {t['name']}")
        except (Mismatch, hs.HandshakeError) as error:
            failures += 1
            print(f"FAIL transcript {t['name']}: {error}")
    for case in vectors["negative"]:
        try:
            got = run_negative(case, transcripts)
        except Mismatch as error:
            got = f"error in the case itself: {error}"
        if got == case["expect"]:
            print(f"ok negative {case['name']}: {got}")
        else:
            failures += 1
            print(f"FAIL negative {case['name']}: expected {case['expect']}, got {got}")
    total = len(vectors["transcripts"]) + len(vectors["negative"])
    print(f"{total - failures}/{total} handshake vectors reproduced "
          f"({len(vectors['transcripts'])} transcripts, {len(vectors['negative'])} negative cases)")
    return 0 if failures == 0 and total > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
