"""The real SCEP clients as a device or network equipment runs them: micromdm scepclient and strongSwan ``pki --scep``,
plus ``openssl verify`` and certificate loading for checking what they got."""

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from support.processes import need
from support.site import OU


def scepclient(workdir: Path, url: str, challenge: str | None, cn: str, *extra, timeout: float = 90):
    """micromdm scepclient in ``workdir`` (its key.pem, csr.pem and client.pem live there); the finished run."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [need("scepclient"), "-private-key", str(workdir / "key.pem"), "-server-url", url, "-cn", cn, *extra]
    if challenge is not None:
        args.append("-challenge=" + challenge)
    return subprocess.run(args, cwd=str(workdir), capture_output=True, text=True, timeout=timeout)


def bound_scepclient(workdir: Path, url: str, challenge: str | None, cn: str, *extra):
    """scepclient asking for OU + CN only (no O or C of its own), as the bound Wi-Fi profile
    (site.bound_mobileconfig) renders them, in the order scepclient writes them."""
    return scepclient(workdir, url, challenge, cn, "-organization", "", "-country", "", "-ou", OU, *extra)


def enroll(workdir: Path, url: str, challenge: str, cn: str, ou: str | None = None) -> str:
    """A fresh enrollment with scepclient (its old csr.pem/client.pem removed, key kept), which must succeed;
    the certificate's PEM."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("csr.pem", "client.pem"):
        (workdir / name).unlink(missing_ok=True)
    result = scepclient(workdir, url, challenge, cn, *(["-ou", ou] if ou else []), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return (workdir / "client.pem").read_text()


def pki(*args, timeout=90, cwd=None):
    """strongSwan ``pki`` with ``args`` in ``cwd``; the finished run, output as bytes."""
    return subprocess.run([need("pki"), *args], cwd=None if cwd is None else str(cwd), capture_output=True,
                          timeout=timeout)


def strongswan_key(path: Path) -> Path:
    """A new 2048-bit RSA key from ``pki --gen``, DER, written to ``path``."""
    result = pki("--gen", "--type", "rsa", "--size", "2048", "--outform", "der")
    assert result.returncode == 0
    path.write_bytes(result.stdout)
    return path


def strongswan_enroll(workdir: Path, name: str, url: str, challenge: str, dn: str, *sans: str):
    """``pki --scepca`` then ``pki --scep`` for ``dn`` (and ``--san`` each of ``sans``) over AES and SHA-256, a
    new key and the CA certificate as ``workdir/<name>-*.der``; the finished run (its stdout the DER certificate)."""
    ca = workdir / (name + "-ca.der")
    result = pki("--scepca", "--url", url, "--caout", str(ca))
    assert result.returncode == 0, result.stderr
    key = strongswan_key(workdir / (name + "-key.der"))
    args = ["--scep", "--url", url, "--in", str(key), "--dn", dn, "--password", challenge,
            "--cacert-enc", str(ca), "--cacert-sig", str(ca), "--cipher", "aes", "--digest", "sha256",
            "--maxpolltime", "5", "--interval", "1", "--outform", "der"]
    for san in sans:
        args += ["--san", san]
    return pki(*args, timeout=60)


def openssl_verify(ca_pem: Path, cert: Path, der=False, untrusted: Path | None = None) -> str:
    """``openssl verify -CAfile`` (``-untrusted``: intermediates to chain through) that must succeed; its output."""
    if der:
        pem = cert.with_suffix(".pem")
        pem.write_bytes(x509.load_der_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.PEM))
        cert = pem
    chain = [] if untrusted is None else ["-untrusted", str(untrusted)]
    result = subprocess.run([need("openssl"), "verify", "-CAfile", str(ca_pem), *chain, str(cert)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load(path: Path) -> x509.Certificate:
    """A certificate file, PEM or DER."""
    data = path.read_bytes()
    return x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else x509.load_der_x509_certificate(data)


def common_name(certificate: x509.Certificate) -> str:
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def http(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of one plain GET, or POST with ``body`` (step-ca answers big bodies chunked)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def csr_enroll(url: str, challenge: str, subject: x509.Name, sans=(), key_size: int = 2048):
    """
    A device written in the test, for requests no real client can make (a UPN or URI subjectAltName): GetCACert
    and one PKCSReq with a CSR for ``subject`` and ``sans`` (x509 GeneralNames), over HTTP to ``url``.

    ``(pkiStatus, failInfo, certificates)`` of the verified, decrypted CertRep.
    """
    from cryptography.hazmat.primitives.asymmetric import rsa

    from scepproxyd.scep import codec
    from support.certs import csr, self_signed

    status, _, body = http(url + "?operation=GetCACert")
    assert status == 200, body
    certificates = [x509.load_der_x509_certificate(der) for der in codec.ca_certificates(body)]
    # A CA's own certificate encrypts and signs unless an RA's is there too (RA mode): then the RA's.
    (recipient,) = [c for c in certificates if not _is_ca(c)] or certificates[:1]
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    signer, _ = self_signed("csr-enroll", key=key)
    message, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=signer,
                                     recipient_certificate=recipient, csr=csr(key, subject, list(sans), challenge=challenge))
    status, _, answer = http(url + "?operation=PKIOperation", message)
    assert status == 200, (status, answer)
    return codec.read_response(answer, key, signer, recipient)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
