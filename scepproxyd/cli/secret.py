"""``scepproxyctl secret ...``: custom secrets (``$FLEET_SECRET_<NAME>`` in profiles) through the admin API.

A value is read like a CA's static challenge: from ``--value-file FILE``, or
stdin (prompted without echo on a terminal), never from the command line,
where it would land in shell history and ``ps``. No command prints a value.
"""

from __future__ import annotations

from scepproxyd.cli.challenge import read_challenge
from scepproxyd.cli.client import api_path
from scepproxyd.cli.render import fields, table, text


def set_secret(api, args, stdin):
    value = read_challenge(args.value_file, stdin, "Value of secret %s: " % (args.name,), what="secret value")
    status, answer = api.request("PUT", api_path("secrets", args.name), {"value": value})
    verb = "added" if status == 201 else "changed" if answer["changed"] else "kept (the same value)"
    resent = answer["resent"]
    note = "; %d host profiles sent again" % (resent,) if resent else ""
    return answer, "%s secret %s%s" % (verb, answer["name"], note)


def list_secrets(api, args, stdin):
    _, answer = api.request("GET", api_path("secrets"))
    rows = answer["secrets"]
    if not rows:
        return answer, "no secrets"
    return answer, table(("NAME", "CREATED", "UPDATED"), [(s["name"], s["created_at"], s["updated_at"]) for s in rows])


def show(api, args, stdin):
    _, s = api.request("GET", api_path("secrets", args.name))
    return s, fields([
        ("name", s["name"]), ("created_at", s["created_at"]), ("updated_at", s["updated_at"]),
        ("profiles", text(", ".join(s["profiles"]) or None)),
    ])


def delete(api, args, stdin):
    api.request("DELETE", api_path("secrets", args.name))
    return None, "deleted secret %s" % (args.name,)


def add_commands(command, group, arg) -> None:
    """Register the group on scepproxyctl's parser (called from ``build_parser``)."""
    secret = group("secret", "custom secrets for $FLEET_SECRET_<NAME> in profiles (values never shown)")
    name = arg("name", metavar="NAME", help="the secret's name, as after $FLEET_SECRET_")
    command(secret, "set", set_secret, "add a secret or change its value (host profiles using it are sent again)",
            name, arg("--value-file", metavar="FILE",
                      help="read the value from FILE (- or absent: stdin, prompted without echo on a terminal)"))
    command(secret, "list", list_secrets, "list secrets: names and dates, never values")
    command(secret, "show", show, "show a secret's dates and the profiles that use it", name)
    command(secret, "delete", delete, "delete a secret no profile uses", name)
