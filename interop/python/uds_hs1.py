"""UDS-HS1 and its framed channel, written from PROTOCOL.md alone.

An independent second implementation (Python, pyca/cryptography) used to check that the
Swift implementation's bytes are the ones the document specifies. Sans-IO: every function
takes and returns bytes; the caller does the I/O. Errors are `HandshakeError` carrying the
reason codes of PROTOCOL.md section 8, spelled exactly.
"""

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

# Section 3.
LABEL = b"ocapn-uds-hs/1"
NOISE = b"Noise_KK_25519_ChaChaPoly_SHA256"
MAGIC = b"oUHS"
VERSION = 1
CTX_R = b"ocapn-uds-hs/1 responder-sig\x00"
CTX_I = b"ocapn-uds-hs/1 initiator-sig\x00"
CTX_SID = b"ocapn-uds-hs/1 session-id\x00"
MSG1_TYPE, MSG2_TYPE = 0x01, 0x02
MSG1_LEN, MSG2_LEN, AUTH_LEN = 120, 113, 83

# Section 6.2.
DATA, CLOSE, REKEY, AUTH, DATA_MORE = 0x00, 0x01, 0x02, 0x03, 0x04
MAX_FRAGMENT = 65518
MAX_MESSAGE = 16 * 1024 * 1024

P = 2**255 - 19


class HandshakeError(Exception):
    def __init__(self, code, detail=""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


# ---------------------------------------------------------------------------------------------
# Ed25519 point checks and the Ed25519 -> X25519 maps (section 2 and 4.1), in pure Python so
# that no part of the key handling is borrowed from libsodium.

_D = (-121665 * pow(121666, P - 2, P)) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_L = 2**252 + 27742317777372353535851937790883648493


def _decompress(encoding):
    """Returns the extended point, or None when the encoding is not a canonical curve point."""
    y = int.from_bytes(encoding, "little") & ((1 << 255) - 1)
    sign = encoding[31] >> 7
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (_D * y * y + 1) % P
    x2 = u * pow(v, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P != 0:
        return None
    if x & 1 != sign:
        x = (P - x) % P
    return (x, y, 1, x * y % P)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * _D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(k, point):
    result = (0, 1, 1, 0)
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _is_identity(point):
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


def ed25519_pk_to_x25519(ik):
    """`crypto_sign_ed25519_pk_to_curve25519` with the canonical check of section 4.1: the key
    must be a canonical encoding of a point of prime order L (no small-order, no mixed-order
    point). Raises `invalidIdentityKey`."""
    if len(ik) != 32:
        raise HandshakeError("invalidIdentityKey", "length")
    point = _decompress(ik)
    if point is None:
        raise HandshakeError("invalidIdentityKey", "not a canonical curve point")
    if _is_identity(_mul(8, point)):
        raise HandshakeError("invalidIdentityKey", "small order")
    if not _is_identity(_mul(_L, point)):
        raise HandshakeError("invalidIdentityKey", "not in the prime-order subgroup")
    y = point[1]
    u = (1 + y) * pow((1 - y) % P, P - 2, P) % P
    return u.to_bytes(32, "little")


def ed25519_seed_to_x25519(seed):
    """`crypto_sign_ed25519_sk_to_curve25519`: the clamped first half of SHA-512(seed)."""
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def is_canonical_x25519(public):
    """Section 5.4: bit 255 clear and u < 2^255 - 19."""
    return public[31] & 0x80 == 0 and int.from_bytes(public, "little") < P


def dh(private, public):
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public))
    except ValueError:  # pyca refuses an all-zero shared secret, like libsodium
        raise HandshakeError("lowOrderPoint")


def x25519_public(private):
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Identity:
    """An Ed25519 identity from its 32-byte seed."""

    def __init__(self, seed):
        self.seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.x25519 = ed25519_seed_to_x25519(self.seed)

    def sign(self, message):
        return self._key.sign(message)


def verify(ik, signature, message):
    try:
        Ed25519PublicKey.from_public_bytes(ik).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise HandshakeError("badSignature")


# ---------------------------------------------------------------------------------------------
# Noise (revision 34) symmetric state with SHA-256 and ChaCha20-Poly1305 (section 2).

def _nonce(n):
    return b"\x00\x00\x00\x00" + struct.pack("<Q", n)


def encrypt(key, n, ad, plaintext):
    return ChaCha20Poly1305(key).encrypt(_nonce(n), plaintext, ad)


def decrypt(key, n, ad, ciphertext):
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(n), ciphertext, ad)
    except Exception:
        raise HandshakeError("decryptFailed")


def _hmac(key, data):
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf2(ck, ikm):
    temp = _hmac(ck, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


class SymmetricState:
    def __init__(self):
        self.h = NOISE  # exactly 32 bytes, so h0 = ck0 = NOISE
        self.ck = NOISE
        self.k = None
        self.n = 0

    def mix_hash(self, data):
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key(self, ikm):
        self.ck, self.k = hkdf2(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext):
        c = encrypt(self.k, self.n, self.h, plaintext)
        self.n += 1
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, ciphertext):
        p = decrypt(self.k, self.n, self.h, ciphertext)
        self.n += 1
        self.mix_hash(ciphertext)
        return p

    def split(self):
        return hkdf2(self.ck, b"")


def _initial_state(header, px_i, px_r):
    s = SymmetricState()
    s.mix_hash(LABEL + b"\x00" + header)  # prologue: LABEL || 00 || msg1[0..72)
    s.mix_hash(px_i)
    s.mix_hash(px_r)
    return s


def _header(ik_i, ik_r):
    return MAGIC + bytes([VERSION, MSG1_TYPE, 0, 0]) + ik_i + ik_r


def session_id(hh):
    return hashlib.sha256(CTX_SID + hh).digest()[:16]


class Result:
    """What a finished handshake yields on one side."""

    def __init__(self, role, peer, hh, key_ir, key_ri):
        self.role = role
        self.peer = peer
        self.handshake_hash = hh
        self.session_id = session_id(hh)
        self.key_ir = key_ir
        self.key_ri = key_ri

    def channel(self, max_fragment=MAX_FRAGMENT, max_message=MAX_MESSAGE):
        if self.role == "initiator":  # AUTH used I's nonce 0
            return Channel(self.key_ir, self.key_ri, send_n=1, recv_n=0,
                           max_fragment=max_fragment, max_message=max_message)
        return Channel(self.key_ri, self.key_ir, send_n=0, recv_n=1,
                       max_fragment=max_fragment, max_message=max_message)


# ---------------------------------------------------------------------------------------------
# The two roles (sections 4 and 5).

class Initiator:
    def __init__(self, identity, responder_key, ephemeral):
        """`ephemeral` is the 32-byte X25519 private key e_I (injected: the caller draws it)."""
        if responder_key == identity.public:
            raise HandshakeError("selfConnection")
        self.identity = identity
        self.ik_r = bytes(responder_key)
        px_r = ed25519_pk_to_x25519(self.ik_r)
        px_i = ed25519_pk_to_x25519(identity.public)
        self.e = bytes(ephemeral)
        self.E = x25519_public(self.e)
        header = _header(identity.public, self.ik_r)
        s = _initial_state(header, px_i, px_r)
        s.mix_hash(self.E)
        s.mix_key(dh(self.e, px_r))                 # es
        s.mix_key(dh(identity.x25519, px_r))        # ss
        tag1 = s.encrypt_and_hash(b"")
        self.state = s
        self.msg1 = header + self.E + tag1

    def read_msg2(self, data):
        """Processes exactly msg2 (the caller gives at least 113 bytes, or fewer at EOF).
        Returns (auth bytes, Result)."""
        if len(data) < MSG2_LEN:
            raise HandshakeError("truncated")
        if data[0] != MSG2_TYPE:
            raise HandshakeError("unexpectedMessageType")
        e_r, c2 = data[1:33], data[33:MSG2_LEN]
        if not is_canonical_x25519(e_r):
            raise HandshakeError("nonCanonicalPoint")
        if e_r == self.E:
            raise HandshakeError("reflection")
        s = self.state
        s.mix_hash(e_r)
        s.mix_key(dh(self.e, e_r))                  # ee
        s.mix_key(dh(self.identity.x25519, e_r))    # se
        h_signed = s.h
        sig_r = s.decrypt_and_hash(c2)
        verify(self.ik_r, sig_r, CTX_R + h_signed)
        hh = s.h
        key_ir, key_ri = s.split()
        sig_i = self.identity.sign(CTX_I + hh)
        auth = _frame(key_ir, 0, AUTH, sig_i)
        return auth, Result("initiator", self.ik_r, hh, key_ir, key_ri)


class Responder:
    def __init__(self, identity, announced_from, ephemeral, policy=None):
        self.identity = identity
        self.announced_from = bytes(announced_from)
        self.e = bytes(ephemeral)
        self.policy = policy or (lambda key: True)
        self.state = None

    def read_msg1(self, data):
        """Processes msg1 (section 5.4, in that order) and returns msg2."""
        if len(data) < MSG1_LEN:
            raise HandshakeError("truncated")
        msg1 = data[:MSG1_LEN]
        if msg1[0:4] != MAGIC:
            raise HandshakeError("badMagic")
        if msg1[4] != VERSION:
            raise HandshakeError("unsupportedVersion")
        if msg1[5] != MSG1_TYPE:
            raise HandshakeError("unexpectedMessageType")
        if msg1[6:8] != b"\x00\x00":
            raise HandshakeError("reservedFlagsSet")
        ik_i, ik_r, e_i, tag1 = msg1[8:40], msg1[40:72], msg1[72:104], msg1[104:120]
        if ik_r != self.identity.public:
            raise HandshakeError("wrongResponder")
        if ik_i != self.announced_from:
            raise HandshakeError("identityMismatch")
        if ik_i == ik_r:
            raise HandshakeError("selfConnection")
        if not self.policy(ik_i):
            raise HandshakeError("peerNotAllowed")
        px_i = ed25519_pk_to_x25519(ik_i)
        px_r = ed25519_pk_to_x25519(self.identity.public)
        if not is_canonical_x25519(e_i):
            raise HandshakeError("nonCanonicalPoint")
        s = _initial_state(msg1[0:72], px_i, px_r)
        s.mix_hash(e_i)
        s.mix_key(dh(self.identity.x25519, e_i))    # es
        s.mix_key(dh(self.identity.x25519, px_i))   # ss
        s.decrypt_and_hash(tag1)
        E = x25519_public(self.e)
        if E == e_i:
            raise HandshakeError("reflection")
        s.mix_hash(E)
        s.mix_key(dh(self.e, e_i))                  # ee
        s.mix_key(dh(self.e, px_i))                 # se
        sig_r = self.identity.sign(CTX_R + s.h)
        c2 = s.encrypt_and_hash(sig_r)
        self.ik_i = ik_i
        self.hh = s.h
        self.key_ir, self.key_ri = s.split()
        self.state = s
        return bytes([MSG2_TYPE]) + E + c2

    def read_auth(self, data):
        """Processes AUTH (I's frame n = 0). Returns (Result, bytes after AUTH)."""
        if len(data) >= 2 and struct.unpack(">H", data[:2])[0] != AUTH_LEN - 2:
            raise HandshakeError("badFrameLength")
        if len(data) < AUTH_LEN:
            raise HandshakeError("truncated")
        plain = decrypt(self.key_ir, 0, b"", data[2:AUTH_LEN])
        if plain[0] != AUTH:
            raise HandshakeError("unexpectedMessageType")
        verify(self.ik_i, plain[1:], CTX_I + self.hh)
        # Only now is the session established.
        return Result("responder", self.ik_i, self.hh, self.key_ir, self.key_ri), data[AUTH_LEN:]


# ---------------------------------------------------------------------------------------------
# The framed channel (section 6).

def _frame(key, n, frame_type, body):
    ciphertext = encrypt(key, n, b"", bytes([frame_type]) + body)
    return struct.pack(">H", len(ciphertext)) + ciphertext


class Channel:
    def __init__(self, send_key, recv_key, send_n, recv_n, max_fragment=MAX_FRAGMENT,
                 max_message=MAX_MESSAGE):
        self.send_key, self.recv_key = send_key, recv_key
        self.send_n, self.recv_n = send_n, recv_n
        self.max_fragment = max_fragment
        self.max_message = max_message
        self.buffer = b""
        self.partial = None
        self.closed_by_peer = False
        self.sent_close = False

    # Sending.
    def seal(self, message):
        if not message:
            raise ValueError("empty messages are never sent")
        if len(message) > self.max_message:
            raise HandshakeError("messageTooLarge")
        pieces = [message[i:i + self.max_fragment]
                  for i in range(0, len(message), self.max_fragment)]
        if self.send_n + len(pieces) > 2**64 - 2:
            raise HandshakeError("nonceExhausted")
        out = b""
        for index, piece in enumerate(pieces):
            kind = DATA if index == len(pieces) - 1 else DATA_MORE
            out += _frame(self.send_key, self.send_n, kind, piece)
            self.send_n += 1
        return out

    def seal_close(self):
        out = _frame(self.send_key, self.send_n, CLOSE, b"")
        self.send_n += 1
        self.sent_close = True
        return out

    # Receiving.
    def feed(self, data):
        """Consumes bytes; returns a list of events: ("message", bytes) or ("close",)."""
        if self.closed_by_peer and data:
            raise HandshakeError("dataAfterClose")
        self.buffer += data
        events = []
        while len(self.buffer) >= 2:
            if self.closed_by_peer:
                raise HandshakeError("dataAfterClose")
            length = struct.unpack(">H", self.buffer[:2])[0]
            if length < 17:
                raise HandshakeError("badFrameLength")
            if len(self.buffer) < 2 + length:
                break
            body_len = length - 17
            pending = len(self.partial) if self.partial is not None else 0
            if pending + body_len > self.max_message:  # checked before decrypting (6.3)
                raise HandshakeError("messageTooLarge")
            if self.recv_n >= 2**64 - 1:
                raise HandshakeError("nonceExhausted")
            plain = decrypt(self.recv_key, self.recv_n, b"", self.buffer[2:2 + length])
            self.recv_n += 1
            self.buffer = self.buffer[2 + length:]
            kind, body = plain[0], plain[1:]
            if kind in (DATA, DATA_MORE):
                if not body:
                    raise HandshakeError("emptyDataFrame")
                self.partial = (self.partial or b"") + body
                if kind == DATA:
                    events.append(("message", self.partial))
                    self.partial = None
            elif kind == CLOSE:
                if body:
                    raise HandshakeError("badFrameLength")
                if self.partial is not None:
                    raise HandshakeError("truncated")
                self.closed_by_peer = True
                events.append(("close",))
            elif kind == AUTH:
                raise HandshakeError("unexpectedAuthFrame")
            else:
                raise HandshakeError("unknownFrameType")
        if self.closed_by_peer and self.buffer:
            raise HandshakeError("dataAfterClose")
        return events

    def eof(self):
        """End of stream: clean only after CLOSE."""
        if not self.closed_by_peer or self.buffer:
            raise HandshakeError("truncated")
