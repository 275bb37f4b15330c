"""The small part of Syrup the peer-to-server leg needs, written from Vectors/syrup.md.

Canonical encoding of bytestrings, strings, symbols, integers, booleans, lists, dictionaries
and records; a bounded decoder that reports an incomplete value as None so the caller can read
more.
"""


class Symbol(str):
    pass


class Record:
    def __init__(self, label, *fields):
        self.label = label
        self.fields = list(fields)

    def __repr__(self):
        return f"Record({self.label!r}, {self.fields!r})"


class SyrupError(Exception):
    pass


def encode(value):
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int):
        return str(abs(value)).encode() + (b"-" if value < 0 else b"+")
    if isinstance(value, (bytes, bytearray)):
        return str(len(value)).encode() + b":" + bytes(value)
    if isinstance(value, Symbol):
        raw = value.encode()
        return str(len(raw)).encode() + b"'" + raw
    if isinstance(value, str):
        raw = value.encode()
        return str(len(raw)).encode() + b'"' + raw
    if isinstance(value, list):
        return b"[" + b"".join(encode(v) for v in value) + b"]"
    if isinstance(value, dict):
        pairs = sorted((encode(k), encode(v)) for k, v in value.items())
        return b"{" + b"".join(k + v for k, v in pairs) + b"}"
    if isinstance(value, Record):
        return b"<" + encode(value.label) + b"".join(encode(f) for f in value.fields) + b">"
    raise SyrupError(f"cannot encode {type(value).__name__}")


class _Incomplete(Exception):
    pass


def decode_prefix(data, max_depth=16, max_length=16384):
    """Decodes one value at the start of `data`: (value, bytes used), or None if incomplete."""
    try:
        value, end = _decode(data, 0, 0, max_depth, max_length)
    except _Incomplete:
        if len(data) > max_length:
            raise SyrupError("value too large")
        return None
    return value, end


def _need(data, index):
    if index >= len(data):
        raise _Incomplete()


def _decode(data, i, depth, max_depth, max_length):
    _need(data, i)
    c = data[i:i + 1]
    if c == b"t":
        return True, i + 1
    if c == b"f":
        return False, i + 1
    if c in (b"[", b"{", b"<"):
        if depth >= max_depth:
            raise SyrupError("too deep")
        closer = {b"[": b"]", b"{": b"}", b"<": b">"}[c]
        items, j = [], i + 1
        while True:
            _need(data, j)
            if data[j:j + 1] == closer:
                break
            item, j = _decode(data, j, depth + 1, max_depth, max_length)
            items.append(item)
        j += 1
        if c == b"[":
            return items, j
        if c == b"{":
            if len(items) % 2:
                raise SyrupError("dictionary closed after a key")
            return {_key(items[k]): items[k + 1] for k in range(0, len(items), 2)}, j
        if not items:
            raise SyrupError("record without a label")
        return Record(items[0], *items[1:]), j
    if c.isdigit():
        j = i
        while True:
            _need(data, j)
            if not data[j:j + 1].isdigit():
                break
            j += 1
            if j - i > 20:
                raise SyrupError("number too long")
        digits = data[i:j]
        if len(digits) > 1 and digits[:1] == b"0":
            raise SyrupError("non-canonical number")
        n, kind = int(digits), data[j:j + 1]
        if kind == b"+":
            return n, j + 1
        if kind == b"-":
            if n == 0:
                raise SyrupError("non-canonical zero")
            return -n, j + 1
        if kind not in (b":", b'"', b"'"):
            raise SyrupError(f"unexpected byte {kind!r}")
        if n > max_length:
            raise SyrupError("length over the limit")
        start, end = j + 1, j + 1 + n
        if end > len(data):
            raise _Incomplete()
        body = data[start:end]
        if kind == b":":
            return bytes(body), end
        text = body.decode("utf-8")
        return (text if kind == b'"' else Symbol(text)), end
    raise SyrupError(f"unexpected byte {c!r}")


def _key(value):
    return tuple(value) if isinstance(value, list) else value
