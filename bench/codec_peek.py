"""Micro-benchmark: the proxy's cheap look at a PKIOperation and a CertRep beside the full asn1crypto parse.

What the proxy runs on the reactor for every PKIOperation: ``looks_like_pki_message``
on the request, ``pki_message_status`` (or ``cert_rep_status``) on the CertRep. Each is
timed on the cheap path (codec/skim.py, what the public functions run) and on the full
parse they fall back to (``peek._full_...``), on a real PKCSReq and a real SUCCESS
CertRep built with the codec's builders (2048-bit RSA CA, the issued certificate inside),
in DER and in the indefinite-length BER OpenSSL's streaming mode writes. It prints the
median µs per call of each over ``--runs`` pairs of batches of ``--number`` calls (cheap
then full), and the median of each pair's full/cheap ratio.

    .venv/bin/python bench/codec_peek.py [--runs 15] [--number 200]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.ber_forms import to_indefinite_ber  # noqa: E402
from support.scep_capture import issue, make_ca, make_device  # noqa: E402
from scepproxyd.scep import codec  # noqa: E402
from scepproxyd.scep.codec import peek  # noqa: E402


def messages() -> dict[str, bytes]:
    ca_cert, ca_key = make_ca("Bench CA")
    key, cert, csr = make_device("bench-device")
    request, header = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=cert,
                                          recipient_certificate=ca_cert, csr=csr)
    cert_rep = codec.build_cert_rep(header=header, status="SUCCESS", signer_key=ca_key, signer_certificate=ca_cert,
                                    certificates=[issue(ca_cert, ca_key, csr)])
    return {"PKCSReq": request, "CertRep": cert_rep,
            "PKCSReq (BER)": to_indefinite_ber(request), "CertRep (BER)": to_indefinite_ber(cert_rep)}


CALLS = [
    # (name, cheap, full, which messages)
    ("looks_like_pki_message", codec.looks_like_pki_message, peek._full_looks_like_pki_message, "PKCSReq"),
    ("cert_rep_status", codec.cert_rep_status, peek._full_cert_rep_status, "CertRep"),
    ("pki_message_status", codec.pki_message_status, peek._full_pki_message_status, "CertRep"),
]


def batch_us(function, argument, number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        function(argument)
    return (time.perf_counter() - started) / number * 1e6


def compare(cheap, full, argument, runs: int, number: int) -> tuple[float, float, float]:
    """Median µs per call of each, and the median of each run's full/cheap: the two batches of a run
    follow each other, so a busy machine weighs on both alike."""
    fast, slow = [], []
    for _ in range(runs):
        fast.append(batch_us(cheap, argument, number))
        slow.append(batch_us(full, argument, number))
    ratios = [s / f for f, s in zip(fast, slow)]
    return statistics.median(fast), statistics.median(slow), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="batches per figure (the median is printed)")
    parser.add_argument("--number", type=int, default=200, help="calls per batch")
    options = parser.parse_args()
    bodies = messages()
    print("%-24s %-14s %10s %10s %7s" % ("call", "message", "cheap µs", "full µs", "ratio"))
    for name, cheap, full, kind in CALLS:
        for label in (kind, kind + " (BER)"):
            body = bodies[label]
            assert cheap(body) == full(body)
            fast, slow, ratio = compare(cheap, full, body, options.runs, options.number)
            print("%-24s %-14s %10.1f %10.1f %6.1fx" % (name, label, fast, slow, ratio))


if __name__ == "__main__":
    main()
