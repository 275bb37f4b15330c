#!/usr/bin/env python3
"""Live interop: the independent Python UDS-HS1 against real `ocapn-uds` processes.

Starts `ocapn-uds intro-server` and `ocapn-uds peer` (B) in a private temporary directory,
then, as peer A written in Python:
  1. registers with the server in the Goblins form (uds:register, uds:server-response checked
     against the server's key and our challenge, uds:signature over the server's challenge);
  2. makes a socketpair, sends uds:new-connection (from A to B's printed locator) followed by
     the 4-byte marker carrying one end (SCM_RIGHTS);
  3. runs UDS-HS1 as initiator on the other end, sends a message, checks that B echoes it,
     closes with CLOSE both ways and sees the clean end of stream;
  4. checks that B printed `verified-peer: <A's fingerprint>` on stderr.
Exit status 0 and the last line `live echo ok ...` when all of it worked.

Usage: live_echo.py --ocapn-uds PATH/TO/ocapn-uds [--timeout SECONDS]
"""

import argparse
import base64
import hashlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uds_hs1 as hs  # noqa: E402
from syrup_min import Record, Symbol, decode_prefix, encode  # noqa: E402

FD_MARKER = (12345).to_bytes(4, sys.byteorder)  # Goblins' int32 12345 in host order


class Failure(Exception):
    pass


def designator(key):
    return base64.b32encode(key).decode().lower().rstrip("=")


def key_of(text):
    if len(text) != 52:
        raise Failure(f"designator of {len(text)} characters: {text!r}")
    return base64.b32decode(text.upper() + "====")


def fingerprint(key):
    digest = hashlib.blake2b(b"ocapn-uds fingerprint v1\x00" + key, digest_size=32).digest()
    text = base64.b32encode(digest[:15]).decode().lower()
    return "fp1:" + "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def locator(key, hints):
    return Record(Symbol("ocapn-peer"), Symbol("unix-domain-socket"), designator(key),
                  hints if hints else False)


def parse_uri(uri):
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "ocapn" or not parts.netloc.endswith(".unix-domain-socket"):
        raise Failure(f"not a unix-domain-socket locator: {uri!r}")
    key = key_of(parts.netloc[:-len(".unix-domain-socket")])
    hints = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return key, hints


def captp_public_key(key):
    return [Symbol("public-key"), [Symbol("ecc"), [Symbol("curve"), Symbol("Ed25519")],
                                   [Symbol("flags"), Symbol("eddsa")], [Symbol("q"), key]]]


def key_from_captp(value):
    if encode(value) != encode(captp_public_key(value[1][3][1] if _shape_ok(value) else b"")):
        raise Failure(f"not a CapTP Ed25519 public key: {value!r}")
    return value[1][3][1]


def _shape_ok(value):
    try:
        return isinstance(value[1][3][1], bytes) and len(value[1][3][1]) == 32
    except (IndexError, TypeError, KeyError):
        return False


def signature_from(value):
    """uds:server-response carries either raw 64 bytes or a CapTP sig-val list."""
    if isinstance(value, bytes) and len(value) == 64:
        return value
    try:
        if value[0] == "sig-val" and value[1][0] == "eddsa":
            r, s = value[1][1], value[1][2]
            if r[0] == "r" and s[0] == "s" and len(r[1]) == 32 and len(s[1]) == 32:
                return r[1] + s[1]
    except (IndexError, TypeError):
        pass
    raise Failure(f"not an Ed25519 signature: {value!r}")


class Stream:
    """Blocking reads with a deadline over one socket."""

    def __init__(self, sock, deadline):
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def _fill(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Failure("timed out")
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            raise Failure("timed out")
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_exact(self, n):
        """Up to n bytes: fewer only at end of stream."""
        while len(self.buffer) < n and self._fill():
            pass
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_value(self):
        while True:
            decoded = decode_prefix(self.buffer)
            if decoded is not None:
                value, used = decoded
                self.buffer = self.buffer[used:]
                return value
            if not self._fill():
                raise Failure("server closed the connection")

    def read_some(self):
        """Whatever is buffered or arrives next; b"" at end of stream."""
        if self.buffer:
            out, self.buffer = self.buffer, b""
            return out
        self._fill()
        out, self.buffer = self.buffer, b""
        return out


def register(sock, me, server_key, deadline):
    """The Goblins registration form (Vectors/ocapn-examples.json, registration_of_A_goblins)."""
    stream = Stream(sock, deadline)
    client_challenge = os.urandom(64)
    sock.sendall(encode(Record(Symbol("uds:register"), locator(me.public, None), client_challenge)))
    response = stream.read_value()
    if not (isinstance(response, Record) and response.label == "uds:server-response"
            and len(response.fields) == 3):
        raise Failure(f"expected uds:server-response, got {response!r}")
    key_value, server_challenge, signature_value = response.fields
    key = key_from_captp(key_value)
    if key != server_key:
        raise Failure("the server answered with another key than the one it printed")
    if not (isinstance(server_challenge, bytes) and len(server_challenge) == 64):
        raise Failure("server challenge is not 64 bytes")
    if server_challenge == client_challenge:
        raise Failure("the server reflected our challenge")
    try:
        hs.verify(key, signature_from(signature_value), client_challenge)
    except hs.HandshakeError:
        raise Failure("the server's signature over our challenge does not verify")
    sock.sendall(encode(Record(Symbol("uds:signature"), server_challenge,
                               me.sign(server_challenge))))
    return stream


def start(args, name, tmp):
    # The child appends (O_APPEND) and we read through a handle of our own: sharing one file
    # offset, a read's seek(0) could land the child's next write at the start of the file,
    # over what it had printed.
    log = os.path.join(tmp, f"{name}.stderr")
    with open(log, "ab") as child_stderr:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=child_stderr, stdin=subprocess.DEVNULL)
    return process, log


def first_line(process, log, what, deadline):
    fd = process.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise Failure(f"{what} printed no line in time; stderr: {tail(log)}")
        chunk = os.read(fd, 1)
        if not chunk:
            raise Failure(f"{what} exited ({process.wait()}) before printing; stderr: {tail(log)}")
        line += chunk
    return line.decode().strip()


def tail(log):
    with open(log, "rb") as f:
        return f.read().decode(errors="replace")[-2000:]


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    process.stdout.close()


def run(binary, timeout):
    deadline = time.monotonic() + timeout
    tmp = tempfile.mkdtemp(prefix="ocapn-interop-")
    processes = []
    try:
        for name in ("server", "bob"):
            subprocess.run([binary, "keygen", "--out", os.path.join(tmp, f"{name}.key")],
                           check=True, stdout=subprocess.DEVNULL, timeout=timeout)
        sock_path = os.path.join(tmp, "intro.sock")
        server, server_log = start([binary, "intro-server", "--identity",
                                    os.path.join(tmp, "server.key"), "--socket", sock_path,
                                    # Goblins' form for us, v2 for the Swift peer.
                                    "--registration-forms", "v2,legacy",
                                    "--log-level", "warning"], "server", tmp)
        processes.append((server, server_log))
        listening = first_line(server, server_log, "intro-server", deadline)
        words = listening.split()
        if len(words) < 4 or words[0] != "listening:" or words[2] != "designator:":
            raise Failure(f"unexpected intro-server line: {listening!r}")
        server_key = key_of(words[3])

        bob, bob_log = start([binary, "peer", "--identity", os.path.join(tmp, "bob.key"),
                              "--server", sock_path], "peer", tmp)
        processes.append((bob, bob_log))
        bob_uri = first_line(bob, bob_log, "peer", deadline)
        bob_key, bob_hints = parse_uri(bob_uri)
        if designator(server_key) not in bob_hints:
            raise Failure(f"peer locator {bob_uri!r} does not name the server")
        print(f"peer B: {bob_uri}")

        me = hs.Identity(os.urandom(32))
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.connect(sock_path)
        register(control, me, server_key, deadline)
        print(f"registered (goblins form) as {designator(me.public)}")

        a_end, b_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        my_locator = locator(me.public, {designator(server_key): "t"})
        control.sendall(encode(Record(Symbol("uds:new-connection"), my_locator,
                                      locator(bob_key, bob_hints))))
        socket.send_fds(control, [FD_MARKER], [b_end.fileno()])
        b_end.close()

        initiator = hs.Initiator(me, bob_key, os.urandom(32))
        a_end.sendall(initiator.msg1)
        stream = Stream(a_end, deadline)
        msg2 = stream.read_exact(hs.MSG2_LEN)
        auth, result = initiator.read_msg2(msg2)
        channel = result.channel()
        message = b"hello from the python initiator " + os.urandom(8).hex().encode()
        a_end.sendall(auth + channel.seal(message))  # DATA pipelined behind AUTH
        print(f"handshake ok, session {result.session_id.hex()}")

        events = channel.feed(stream.buffer)
        stream.buffer = b""
        while not events:
            chunk = stream.read_some()
            if not chunk:
                channel.eof()
                raise Failure("end of stream before the echo")
            events = channel.feed(chunk)
        if events[0] != ("message", message):
            raise Failure(f"expected the echo of {message!r}, got {events[0]!r}")
        print(f"echo ok: {message.decode()}")

        a_end.sendall(channel.seal_close())
        while not channel.closed_by_peer:
            chunk = stream.read_some()
            if not chunk:
                channel.eof()  # raises truncated
            channel.feed(chunk)
        if stream.read_some() != b"":
            raise Failure("bytes after the peer's CLOSE")
        channel.eof()
        a_end.close()
        control.close()

        wanted = f"verified-peer: {fingerprint(me.public)}"
        while wanted not in tail(bob_log):
            if time.monotonic() > deadline:
                raise Failure(f"peer never printed {wanted!r}; stderr: {tail(bob_log)}")
            time.sleep(0.05)
        print(f"peer B printed {wanted}")
        print(f"live echo ok: UDS-HS1 from Python to ocapn-uds peer {designator(bob_key)}")
        return 0
    finally:
        for process, _ in reversed(processes):
            stop(process)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ocapn-uds", required=True, help="path to the ocapn-uds binary")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        return run(args.ocapn_uds, args.timeout)
    except (Failure, hs.HandshakeError, subprocess.SubprocessError, OSError) as error:
        print(f"FAIL live echo: {type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
