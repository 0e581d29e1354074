"""BER to DER-shaped bytes, so asn1crypto can read what real clients write.

asn1crypto accepts a constructed (chunked) string only when it also has an
indefinite length. Clients send other BER too: micromdm scepclient 2.1.0
writes EncryptedContentInfo.encryptedContent as a definite-length constructed
[0] holding OCTET STRING chunks, and OpenSSL's streaming mode writes
indefinite lengths everywhere. ``normalize`` rewrites indefinite lengths as
definite ones and joins chunked universal strings into one primitive string.
It never reorders anything, so signed attributes keep the bytes that were
signed. A constructed string under an IMPLICIT tag cannot be recognised
without the schema; ``implicit_octets`` joins those where the schema says a string is.
"""

from scepproxyd.scep.codec.errors import MessageError

_MAX_DEPTH = 64
# Universal types that are strings: in BER they may be sent in chunks.
_STRING_TAGS = frozenset({4, 12, 18, 19, 20, 21, 22, 25, 26, 27, 28, 30})


def length_octets(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _read_header(data: bytes, offset: int, end: int):
    """Return (identifier octets, constructed, class, tag, length or None, content offset)."""
    start = offset
    if offset >= end:
        raise MessageError("truncated: missing tag")
    first = data[offset]
    offset += 1
    tag = first & 0x1F
    if tag == 0x1F:
        tag = 0
        while True:
            if offset >= end:
                raise MessageError("truncated: long tag")
            byte = data[offset]
            offset += 1
            tag = (tag << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
            if offset - start > 6:
                raise MessageError("tag number too large")
    identifier = data[start:offset]
    if offset >= end:
        raise MessageError("truncated: missing length")
    byte = data[offset]
    offset += 1
    if byte == 0x80:
        if not first & 0x20:
            raise MessageError("indefinite length on a primitive value")
        length = None
    elif byte & 0x80:
        count = byte & 0x7F
        if count > 4 or offset + count > end:
            raise MessageError("bad length")
        length = int.from_bytes(data[offset:offset + count], "big")
        offset += count
    else:
        length = byte
    return identifier, bool(first & 0x20), first >> 6, tag, length, offset


def _element(data: bytes, offset: int, end: int, depth: int) -> tuple[bytes, int]:
    """Normalize one TLV starting at ``offset``; return its new encoding and where it ended."""
    if depth > _MAX_DEPTH:
        raise MessageError("nested too deeply")
    identifier, constructed, class_, tag, length, content = _read_header(data, offset, end)
    if not constructed:
        if content + length > end:
            raise MessageError("truncated: value longer than its container")
        return data[offset:content + length], content + length
    children = []
    if length is None:
        position = content
        while True:
            if position + 2 <= end and data[position:position + 2] == b"\x00\x00":
                after = position + 2
                break
            child, position = _element(data, position, end, depth + 1)
            children.append(child)
    else:
        stop = content + length
        if stop > end:
            raise MessageError("truncated: value longer than its container")
        position = content
        while position < stop:
            child, position = _element(data, position, stop, depth + 1)
            children.append(child)
        after = stop
    if class_ == 0 and tag in _STRING_TAGS:
        return bytes([identifier[0] & 0xDF]) + _joined(children), after
    body = b"".join(children)
    return identifier + length_octets(len(body)) + body, after


def _joined(children: list[bytes]) -> bytes:
    """Length and value of a chunked string whose chunks are already normalized."""
    parts = []
    for child in children:
        if child[0] != 0x04:
            raise MessageError("string chunk of another type")
        _, _, _, _, length, content = _read_header(child, 0, len(child))
        parts.append(child[content:content + length])
    body = b"".join(parts)
    return length_octets(len(body)) + body


def normalize(data: bytes) -> bytes:
    """One BER element (nothing after it) as definite-length bytes with joined strings."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("message is not bytes")
    data = bytes(data)
    result, end = _element(data, 0, len(data), 0)
    if end != len(data):
        raise MessageError("trailing bytes after the message")
    return result


def load(data: bytes, spec):
    """``spec`` (an asn1crypto class) parsed from BER ``data``."""
    return spec.load(normalize(data), strict=True)


def children(encoding: bytes) -> list[bytes]:
    """The encodings inside one definite-length constructed element (no parsing beyond that)."""
    _, constructed, _, _, length, start = _read_header(encoding, 0, len(encoding))
    if not constructed or length is None or start + length != len(encoding):
        raise MessageError("expected one definite-length constructed element")
    found = []
    offset = start
    while offset < len(encoding):
        _, _, _, _, length, begin = _read_header(encoding, offset, len(encoding))
        if length is None or begin + length > len(encoding):
            raise MessageError("truncated element")
        found.append(encoding[offset:begin + length])
        offset = begin + length
    return found


def implicit_octets(encoding: bytes, tag: int) -> bytes:
    """The bytes of an OCTET STRING under IMPLICIT [tag], primitive or sent as chunks."""
    _, constructed, class_, found_tag, length, start = _read_header(encoding, 0, len(encoding))
    if class_ != 2 or found_tag != tag or length is None or start + length != len(encoding):
        raise MessageError("expected an [%d] OCTET STRING" % (tag,))
    if not constructed:
        return encoding[start:]
    parts = []
    offset = start
    while offset < len(encoding):
        _, constructed, class_, found_tag, length, start = _read_header(encoding, offset, len(encoding))
        if constructed or class_ != 0 or found_tag != 4 or start + length > len(encoding):
            raise MessageError("chunked string holds something other than OCTET STRING chunks")
        parts.append(encoding[start:start + length])
        offset = start + length
    return b"".join(parts)


def scan(data: bytes) -> dict[int, int]:
    """Check, without building anything, that ``normalize(data)`` would succeed.

    The cheap readers in ``skim.py`` must refuse exactly what ``normalize``
    refuses, so this walks every element with the same rules and the same
    bounds (depth, lengths, end-of-contents, string chunks, trailing bytes),
    in one linear pass with its own stack instead of recursion. It returns,
    for each indefinite-length element, where its contents stop (keyed by where
    they start), so a second look can step over it without scanning again.
    """
    end = len(data)
    stops: dict[int, int] = {}
    # The innermost open element: where its contents stop (-1: indefinite length; -2: none open),
    # the bound its children are read within, where its contents start, and whether it is a
    # chunked string (whose chunks must be OCTET STRINGs). ``outer`` holds the ones around it.
    stop, bound, start, string = -2, end, 0, False
    outer: list[tuple[int, int, int, bool]] = []
    position = 0
    while True:
        if len(outer) > _MAX_DEPTH:
            raise MessageError("nested too deeply")
        # The common headers read here, anything else by _read_header (the same rules, and its errors).
        first = length = -1
        if position + 2 <= bound and data[position] & 0x1F != 0x1F:
            first, length = data[position], data[position + 1]
            if length < 0x80:
                content = position + 2
            elif length == 0x81 and position + 3 <= bound:
                length, content = data[position + 2], position + 3
            elif length == 0x82 and position + 4 <= bound:
                length, content = (data[position + 2] << 8) | data[position + 3], position + 4
            elif length == 0x80 and first & 0x20:
                length, content = None, position + 2
            else:
                first = -1
        if first < 0:
            _, constructed, class_, tag, length, content = _read_header(data, position, bound)
            first = data[position]
        else:
            constructed, class_, tag = first & 0x20, first >> 6, first & 0x1F
        if string and first != 0x04 and first != 0x24:
            raise MessageError("string chunk of another type")
        if not constructed:
            position = content + length
            if position > bound:
                raise MessageError("truncated: value longer than its container")
        else:
            outer.append((stop, bound, start, string))
            string = class_ == 0 and tag in _STRING_TAGS
            start = position = content
            if length is None:
                stop = -1
            else:
                stop = content + length
                if stop > bound:
                    raise MessageError("truncated: value longer than its container")
                bound = stop
        while True:
            if stop >= 0:
                if position < stop:
                    break
            elif stop == -1:
                if position + 2 <= bound and data[position] == 0 and data[position + 1] == 0:
                    stops[start] = position
                    position += 2
                else:
                    break
            else:
                if position != end:
                    raise MessageError("trailing bytes after the message")
                return stops
            stop, bound, start, string = outer.pop()
