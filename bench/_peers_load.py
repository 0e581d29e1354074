"""The load generator of bench/peers.py: real SCEP PKCSReq bodies and a keep-alive HTTP/1.1 client.

It runs in the benchmark's own process, never in the daemon's: asyncio with raw
sockets, one persistent connection per concurrent worker, a fixed list of
requests (all bodies built before any timing starts). It reads Content-Length and
chunked answers (Go's net/http chunks answers over 2 KB, so scepserver's CertReps
come chunked). Each answer is kept, so the caller can check that it really is a
CertRep with pkiStatus SUCCESS before counting it as an enrollment.
"""

import asyncio
import datetime
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from _peers_procs import csr
from scepproxyd.scep import codec


def device_identity(common_name="bench-device"):
    """One device key and its self-signed signer certificate (shared by all bodies: keygen is slow)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert


def pkcs_req(key, cert, recipient, subject, challenge_password, transaction_id=None):
    """
    A real PKCSReq as a device sends it: a CSR (``subject``, a Name or a CN; the
    challengePassword) signed by the device and enveloped to ``recipient``, the
    certificate its GetCACert answer says to encrypt to (the CA's, or the proxy's
    RA certificate for a CA in RA mode).

    ``transaction_id``: by default the codec's, a hash of the CSR's key, so every
    request made with the one bench key shares it; a CA that keeps transactions
    (the built-in CA) needs one per request, as one key per device gives.
    """
    der, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=cert,
                                 recipient_certificate=recipient, csr=csr(key, subject, challenge=challenge_password),
                                 transaction_id=transaction_id)
    return der


def recipient_certificate(ca_cert_body):
    """The certificate a device encrypts to, from a GetCACert answer: the lone one, or the first of a chain
    (the proxy in RA mode sends its RA certificate first)."""
    return x509.load_der_x509_certificate(codec.ca_certificates(ca_cert_body)[0])


def enrolled(body):
    """True when ``body`` is a CertRep whose pkiStatus is SUCCESS."""
    try:
        return codec.cert_rep_status(body)[0] == "SUCCESS"
    except codec.MessageError:
        return False


def describe(status, body):
    """A short word on an answer that is not a SUCCESS CertRep (for the per-run lines)."""
    if status == 200:
        try:
            return "CertRep " + "/".join(str(x) for x in codec.cert_rep_status(body))
        except codec.MessageError:
            return "not a CertRep"
    return repr(body[:60])


async def _read_answer(reader):
    """One HTTP/1.1 answer: (status, body, keep_alive)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from these peers
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, body, headers.get("connection", "").lower() != "close"


def _request_bytes(method, path, host, body):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scepproxyd-bench\r\n"
    if method == "POST":
        head += f"Content-Type: application/x-pki-message\r\nContent-Length: {len(body)}\r\n"
    return head.encode("latin-1") + b"\r\n" + (body or b"")


class Connection:
    """One keep-alive connection to 127.0.0.1:port; reopens when the server closes it."""

    def __init__(self, port):
        self.port, self.reader, self.writer = port, None, None

    async def request(self, method, path, body=b""):
        """Send one request; (status, body, seconds from the first byte written to the last byte read)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        started = time.perf_counter()
        self.writer.write(_request_bytes(method, path, f"127.0.0.1:{self.port}", body))
        status, answer, keep = await _read_answer(self.reader)
        elapsed = time.perf_counter() - started
        if not keep:
            await self.close()
        return status, answer, elapsed

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None


async def _drive(port, requests, concurrency):
    """All ``requests`` ((method, path, body), ...) over ``concurrency`` connections; results in order."""
    results = [None] * len(requests)
    next_index = iter(range(len(requests)))

    async def worker():
        conn = Connection(port)
        try:
            for i in next_index:
                method, path, body = requests[i]
                try:
                    results[i] = await conn.request(method, path, body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    results[i] = (0, repr(e).encode(), 0.0)
                    await conn.close()
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def drive(port, requests, concurrency):
    """Blocking wrapper: (results, wall seconds)."""
    return asyncio.run(_drive(port, requests, concurrency))


async def _alternate(legs):
    """Sequential requests, one at a time, alternating between legs [(port, requests), ...]."""
    conns = [Connection(port) for port, _ in legs]
    out = [[] for _ in legs]
    try:
        for i in range(max(len(reqs) for _, reqs in legs)):
            for leg, (conn, (_, reqs)) in enumerate(zip(conns, legs)):
                if i < len(reqs):
                    out[leg].append(await conn.request(*reqs[i]))
    finally:
        for conn in conns:
            await conn.close()
    return out


def alternate(legs):
    """Blocking wrapper of _alternate: per leg, a list of (status, body, seconds)."""
    return asyncio.run(_alternate(legs))
