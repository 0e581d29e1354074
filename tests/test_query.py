"""SCEP query parsing keeps '+' as data and takes both base64 alphabets."""

import base64

import pytest

from scepproxyd.scep.query import InvalidQuery, decode_message, parse_query, scep_operation

DER = bytes(range(256)) * 3  # contains bytes that encode to '+' and '/'


def test_plus_is_data_not_space():
    encoded = base64.b64encode(DER)
    assert b"+" in encoded
    params = parse_query(b"/x?operation=PKIOperation&message=" + encoded)
    assert decode_message(params["message"]) == DER


def test_percent_escaped_and_urlsafe_alphabets():
    escaped = base64.b64encode(DER).replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
    assert decode_message(parse_query(b"/x?message=" + escaped)["message"]) == DER
    urlsafe = base64.urlsafe_b64encode(DER).rstrip(b"=")
    assert decode_message(urlsafe) == DER


def test_line_wrapped_base64():
    wrapped = base64.encodebytes(DER)
    assert decode_message(wrapped) == DER


@pytest.mark.parametrize("value", [b"", b"!!!!", b"a", b"%%%", b"\n"])
def test_bad_messages(value):
    with pytest.raises(InvalidQuery):
        decode_message(value)


def test_first_value_wins_and_operation_checked():
    params = parse_query(b"/x?operation=GetCACaps&operation=PKIOperation")
    assert scep_operation(params) == "GetCACaps"
    with pytest.raises(InvalidQuery, match="missing operation"):
        scep_operation(parse_query(b"/x"))
    with pytest.raises(InvalidQuery, match="unsupported operation"):
        scep_operation(parse_query(b"/x?operation=DROP"))


def test_bad_escape_in_query():
    with pytest.raises(InvalidQuery, match="percent-escape"):
        parse_query(b"/x?operation=%G1")
