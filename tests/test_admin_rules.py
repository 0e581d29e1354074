"""The admin rules refuse with their own error, which the admin API alone turns into HTTP."""

import pytest

from scepproxyd import admin
from scepproxyd.admin import InvalidAdminInput


def test_a_bad_host_is_refused_with_the_rules_own_error_naming_the_field():
    with pytest.raises(InvalidAdminInput) as refused:
        admin.check_host("HOST-2", "s", "beos")
    assert (refused.value.message, refused.value.field) == (
        "platform must be one of macos, ios, ipados, android, windows", "platform")
    assert admin.check_host("HOST-2", "", "ios") == ("HOST-2", None, "ios")


def test_an_import_names_the_row_at_fault():
    raw = b"uuid,serial,platform\nh1,S1,ios\nh2,S2,beos\n"
    with pytest.raises(InvalidAdminInput) as refused:
        admin.parse_host_import(raw, "text/csv")
    assert (refused.value.message, refused.value.field) == (
        "row 2: platform must be one of macos, ios, ipados, android, windows", "platform")


@pytest.mark.parametrize("check, value, field", [
    (admin.check_ca_name, "no spaces", "name"),
    (admin.check_ca_url, "http://user:pw@ca.example/scep", "url"),
    (admin.check_challenge, "", "challenge"),
])
def test_ca_checks_refuse_with_the_field(check, value, field):
    with pytest.raises(InvalidAdminInput) as refused:
        check(value)
    assert refused.value.field == field and str(refused.value) == refused.value.message


def test_the_rules_do_not_depend_on_the_web_layer():
    source = open(admin.__file__, encoding="utf-8").read()
    assert "scepproxyd.web" not in source
