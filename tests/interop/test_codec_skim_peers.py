"""The proxy's cheap look (codec/skim.py) on what real peers send: judged without asn1crypto, as the full parse.

micromdm scepclient's requests and micromdm scepserver's CertReps (SUCCESS, and FAILURE
for a wrong challenge) are recorded by a relay between them; step-ca's CertReps answer
the codec's requests; strongSwan pki's requests are recorded by the capture server. Each must be read by the cheap path (no ``CannotJudge``), except
the RSASSA-PSS signature, which the full parse reads, and every answer must be the full
parse's.
"""

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from support.certs import csr, self_signed
from support.clients import http, pki, scepclient, strongswan_key
from support.scep_capture import CAPS_WITH_AES, CaptureServer
from support.upstream import CHALLENGE
from scepproxyd.scep import codec
from scepproxyd.scep.codec import peek
from scepproxyd.scep.codec.skim import CannotJudge, skim


def assert_same_answers(message: bytes) -> tuple:
    answers = (codec.looks_like_pki_message(message), *codec.cert_rep_status(message))
    assert answers == (peek._full_looks_like_pki_message(message), *peek._full_cert_rep_status(message))
    assert codec.pki_message_status(message) == answers
    return answers


@pytest.mark.parametrize("challenge, status, fail_info", [(CHALLENGE, "SUCCESS", None),
                                                          ("wrong-challenge", "FAILURE", "badRequest")])
def test_scepclient_and_scepserver_messages(tmp_path, upstream, challenge, status, fail_info):
    with CaptureServer(forward_to=upstream.url) as relay:
        scepclient(tmp_path / "device", relay.url, challenge, "skim-device", timeout=60)
    [request], [answer] = relay.messages, relay.answers
    assert skim(request) == (1, None, None)
    assert assert_same_answers(request) == (True, None, None)
    assert skim(answer)[0] == 1
    assert assert_same_answers(answer) == (True, status, fail_info)


@pytest.mark.parametrize("challenge, status, fail_info", [(CHALLENGE, "SUCCESS", None),
                                                          ("wrong-challenge", "FAILURE", "badRequest")])
def test_step_ca_cert_reps(module_stepca, challenge, status, fail_info):
    """step-ca signs with sha1WithRSAEncryption by its intermediate and echoes the nonces."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer_certificate, _ = self_signed("skim-signer", key=key)
    message, _ = codec.build_request(message_type="PKCSReq", signer_key=key, signer_certificate=signer_certificate,
                                     recipient_certificate=module_stepca.intermediate,
                                     csr=csr(key, "skim-step", challenge=challenge))
    http_status, _, answer = http(module_stepca.url + "?operation=PKIOperation", message)
    assert http_status == 200
    assert skim(answer)[0] == 1
    assert assert_same_answers(answer) == (True, status, fail_info)


def strongswan_request(tmp_path, ca_cert, *extra) -> bytes:
    workdir = tmp_path / "sw"
    workdir.mkdir()
    strongswan_key(workdir / "key.der")
    with CaptureServer([ca_cert], caps=CAPS_WITH_AES) as server:
        url = server.url
        assert pki("--scepca", "--url", url, "--caout", "ca.der", cwd=workdir, timeout=60).returncode == 0
        pki("--scep", "--url", url, "--in", "key.der", "--dn", "CN=skim-gw, O=Codec", "--password", "x",
            "--cacert-enc", "ca.der", "--cacert-sig", "ca.der", "--maxpolltime", "1", *extra, cwd=workdir,
            timeout=60)
    [message] = server.messages
    return message


@pytest.mark.parametrize("extra, judged", [([], True), (["--cipher", "des3", "--digest", "sha512"], True),
                                           (["--digest", "sha1", "--rsa-padding", "pss"], False)],
                         ids=["default", "des3-sha512", "pss"])
def test_strongswan_requests(tmp_path, codec_ca, extra, judged):
    message = strongswan_request(tmp_path, codec_ca[0], *extra)
    if judged:
        assert skim(message) == (1, None, None)
    else:
        with pytest.raises(CannotJudge):
            skim(message)
    assert assert_same_answers(message) == (True, None, None)
