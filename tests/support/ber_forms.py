"""The same message in the BER forms real clients write, made from the codec's DER (tests only).

OpenSSL's streaming mode writes indefinite lengths and chunked strings,
micromdm scepclient a definite-length constructed string; some encoders use
more length octets than they need. Each function re-encodes every element of
a DER message that way and changes nothing else (docs/codec.md, "BER handled").
"""


#: ContentInfo, id-signedData and the [0] of its content, all with indefinite lengths: what a BER
#: SignedData starts with, for fuzzing what follows it.
BER_SIGNED_DATA_PREFIX = b"\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x80"


def _header(data: bytes, offset: int) -> tuple[int, int, int]:
    """(first identifier octet, contents start, contents end) of a DER element with a one-octet tag."""
    length_byte = data[offset + 1]
    if length_byte & 0x80:
        count = length_byte & 0x7F
        length = int.from_bytes(data[offset + 2:offset + 2 + count], "big")
        start = offset + 2 + count
    else:
        length, start = length_byte, offset + 2
    return data[offset], start, start + length


def _rewrite(data: bytes, encode) -> bytes:
    """Each element bottom-up through ``encode(first, body or children, constructed)``."""

    def element(offset):
        first, start, end = _header(data, offset)
        if first & 0x20:
            children, position = [], start
            while position < end:
                child, position = element(position)
                children.append(child)
            return encode(first, children, True), end
        return encode(first, data[start:end], False), end

    return element(0)[0]


def to_indefinite_ber(data: bytes) -> bytes:
    """Re-encode DER with indefinite lengths everywhere and OCTET STRINGs in 7-byte chunks."""

    def encode(first, content, constructed):
        if constructed:
            return bytes([first]) + b"\x80" + b"".join(content) + b"\x00\x00"
        if first == 0x04 and len(content) > 7:
            chunks = b"".join(b"\x04" + bytes([len(content[i:i + 7])]) + content[i:i + 7]
                              for i in range(0, len(content), 7))
            return b"\x24\x80" + chunks + b"\x00\x00"
        return bytes([first]) + _length(len(content)) + content

    return _rewrite(data, encode)


def to_chunked_strings(data: bytes) -> bytes:
    """Re-encode DER with every universal string of 2 or more octets as a definite-length constructed string
    of one-octet-length OCTET STRING chunks (scepclient's encryptedContent, applied everywhere)."""

    def encode(first, content, constructed):
        if constructed:
            body = b"".join(content)
            return bytes([first]) + _length(len(body)) + body
        if first in (0x04, 0x0C, 0x13, 0x16) and len(content) > 1:
            body = b"".join(b"\x04" + _length(len(content[i:i + 5])) + content[i:i + 5]
                            for i in range(0, len(content), 5))
            return bytes([first | 0x20]) + _length(len(body)) + body
        return bytes([first]) + _length(len(content)) + content

    return _rewrite(data, encode)


def to_long_lengths(data: bytes) -> bytes:
    """Re-encode DER with every length in four octets (valid BER, not DER)."""

    def encode(first, content, constructed):
        body = b"".join(content) if constructed else content
        return bytes([first, 0x84]) + len(body).to_bytes(4, "big") + body

    return _rewrite(data, encode)


def _length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body
