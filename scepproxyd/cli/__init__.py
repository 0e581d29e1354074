"""
scepproxyctl: the admin command line of scepproxyd.

It reads the admin endpoint and token file from the daemon's own INI file
(its ``[admin]`` section only: ``scepproxyd.cli.settings``), makes one request
to the admin API (docs/admin-api.md) and prints a table, or the API's JSON
with ``--json``. ``restore`` and ``database copy`` are the exceptions: they
work offline on the state of the stopped daemon (``scepproxyd.backup``,
``scepproxyd.store.copy``).
Exit status: 0 done, 1 refused or unreachable, 2 bad command line or
configuration. The command reference is docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scepproxyd.cli import agent_credential, backup, builtin_ca, commands, database, secret
from scepproxyd.cli.client import AdminClient, CliError, InvocationError, target_from_endpoint, target_from_url
from scepproxyd.cli.render import as_json, message
from scepproxyd.cli.settings import load_admin_endpoint
from scepproxyd.config import ConfigError

PROG = "scepproxyctl"
#: Options people may try for a secret value, and what they would carry: refused, never parsed.
_SECRET_OPTIONS = (("--challenge", "challenge"), ("--value", "secret"))
DEFAULT_CONFIG = "/etc/scepproxyd/scepproxyd.ini"


class Parser(argparse.ArgumentParser):
    """Refuses an unknown option in the words (and with the usage) of the command it was given to."""

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            getattr(parsed, "command_parser", self).error("unrecognized arguments: %s" % (" ".join(unknown),))
        return parsed


def _global_options() -> list[tuple[str, dict]]:
    """Each global option's flag and ``add_argument`` keywords (read anew: the default follows the environment)."""
    return [
        ("--config", dict(default=os.environ.get("SCEPPROXYD_CONFIG", DEFAULT_CONFIG),
                          help="the daemon's INI file, for [admin] url, listen and token_file "
                               "(default: $SCEPPROXYD_CONFIG or %s)" % (DEFAULT_CONFIG,))),
        ("--url", dict(dest="api_url", metavar="URL", default=None,
                       help="the admin API as http://HOST:PORT, instead of [admin] url or listen")),
        ("--token-file", dict(default=None, help="the admin token file, instead of [admin] token_file")),
        ("--json", dict(action="store_true", default=False, help="print the API's JSON answer")),
        ("--timeout", dict(type=float, default=60.0, metavar="SECONDS",
                           help="give up on the admin API after this long (default: 60)")),
    ]


def add_global_options(parser: argparse.ArgumentParser, defaults: bool = True, without=()) -> None:
    """
    The global options, on the top-level parser (``defaults``) and again on every command.

    On a command they default to ``SUPPRESS``: an option given after the command
    sets its value, and one not given there leaves what the top level parsed
    (an option before the command, or the default) alone. ``without`` leaves out
    options the command has for itself (``ca add --url`` is the CA's URL).
    """
    group = parser.add_argument_group("global options (before or after the command)")
    for flag, options in _global_options():
        if flag not in without:
            group.add_argument(flag, **(options if defaults else dict(options, default=argparse.SUPPRESS)))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        # No abbreviations: "--challenge SECRET" must be refused, not taken as --challenge-file.
        allow_abbrev=False,
        description="Manage a running scepproxyd through its admin API.",
        epilog="The CA challenge is never an argument: it is read from --challenge-file or stdin. "
               "Global options go before or after the command.",
    )
    add_global_options(parser)
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(subparsers, name, handler, help, *arguments):
        sub = subparsers.add_parser(name, help=help, description=help, allow_abbrev=False)
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
        add_global_options(sub, defaults=False, without={f for flags, _ in arguments for f in flags})
        sub.set_defaults(handler=handler, command_parser=sub)
        return sub

    def group(name, help):
        sub = groups.add_parser(name, help=help, description=help, allow_abbrev=False)
        add_global_options(sub, defaults=False)
        return sub.add_subparsers(dest="action", metavar="ACTION", required=True)

    def arg(*flags, **options):
        return flags, options

    challenge_file = arg("--challenge-file", metavar="FILE",
                         help="read the CA's static challenge from FILE (- or absent: stdin, prompted on a terminal)")

    trust_bundle = arg("--trust-bundle", metavar="PEM",
                       help="verify the CA's https:// certificate against these roots instead of the system's")
    insecure = arg("--insecure-skip-verify", action="store_true",
                   help="do not verify the CA's https:// certificate (logged as a warning)")
    mode = arg("--mode", choices=("passthrough", "ra"),
               help="passthrough: forward devices' requests untouched; ra: check each CSR and ask the CA as its "
                    "registration authority (docs/ra-mode.md)")
    ra_certificate = arg("--ra-certificate", choices=("enroll", "self-signed"),
                         help="with --mode ra: a new RA certificate, enrolled from the CA (the default for a new "
                              "RA identity) or self-signed")
    ca = group("ca", "CA integrations")
    command(ca, "add", commands.ca_add, "add a CA (it must answer GetCACert)",
            arg("name", metavar="NAME"), arg("--url", required=True, help="the CA's SCEP URL"), challenge_file,
            trust_bundle, insecure, mode, ra_certificate)
    command(ca, "list", commands.ca_list, "list CAs")
    command(ca, "show", commands.ca_show, "show one CA", arg("name", metavar="NAME"))
    edit = command(ca, "edit", commands.ca_edit, "rename a CA, or change its URL, challenge, TLS or mode",
                   arg("name", metavar="NAME"), arg("--name", dest="new_name", metavar="NEW", help="new name"),
                   arg("--url", help="new SCEP URL (the challenge is then read too)"),
                   trust_bundle, arg("--no-trust-bundle", action="store_true", help="use the system's roots again"),
                   arg("--tls-verify", choices=("yes", "no"), help="turn https:// verification on or off"),
                   mode, ra_certificate)
    source = edit.add_mutually_exclusive_group()
    source.add_argument(*challenge_file[0], **challenge_file[1])
    source.add_argument("--challenge-stdin", action="store_true", help="read a new challenge from stdin")
    command(ca, "delete", commands.ca_delete, "delete a CA no profile uses", arg("name", metavar="NAME"))

    host = group("host", "hosts")
    command(host, "add", commands.host_add, "create or update a host",
            arg("uuid", metavar="UUID"), arg("--serial", help="serial number"),
            arg("--platform", required=True, help="macos, ios, ipados, android or windows"))
    command(host, "import", commands.host_import, "create or update hosts from CSV or JSON",
            arg("file", metavar="FILE", help="uuid,serial,platform CSV (optional idp_* columns) or a JSON list; - for stdin"),
            arg("--format", choices=("csv", "json"), help="default: json for *.json, else csv"))
    command(host, "set", commands.host_set, "change a host's serial or end-user (IdP) attributes; '' clears one",
            arg("uuid", metavar="UUID"), arg("--serial", help="serial number"),
            arg("--idp-username", help="the end user's IdP username (often an email address)"),
            arg("--idp-full-name", help="the end user's full name"),
            arg("--idp-groups", metavar="A,B", help="the end user's IdP groups, comma-separated"),
            arg("--idp-department", help="the end user's department"),
            arg("--idp-email", help="the end user's IdP email (what Fleet's older end-user email variable renders)"))
    command(host, "list", commands.host_list, "list hosts", arg("--platform", help="only this platform"))
    command(host, "show", commands.host_show, "show a host and its profiles", arg("uuid", metavar="UUID"))
    command(host, "delete", commands.host_delete, "delete a host and its profile assignments",
            arg("uuid", metavar="UUID"))

    profile = group("profile", "certificate profiles")
    command(profile, "upload", commands.profile_upload, "upload a .mobileconfig, Android template or Windows SyncML profile",
            arg("file", metavar="FILE", help="the profile; - for stdin"),
            arg("--platform", help="macos (default), ios, ipados; android for templates; windows for SyncML"),
            arg("--name", help="display name (default: from the profile)"))
    command(profile, "list", commands.profile_list, "list profiles")
    command(profile, "show", commands.profile_show, "show one profile", arg("uuid", metavar="UUID"))
    command(profile, "delete", commands.profile_delete, "delete a profile and its assignments",
            arg("uuid", metavar="UUID"))
    command(profile, "assign", commands.profile_assign, "assign a profile to hosts, or to a whole platform",
            arg("profile", metavar="PROFILE"), arg("hosts", metavar="HOST", nargs="*"),
            arg("--platform", help="every host of this platform, instead of HOSTs"))
    command(profile, "unassign", commands.profile_unassign, "unassign a profile from hosts (no HOST: from all)",
            arg("profile", metavar="PROFILE"), arg("hosts", metavar="HOST", nargs="*"))

    command(groups, "status", commands.status, "host profiles and their enrollment status",
            arg("--host", help="only this host"), arg("--profile", help="only this profile"),
            arg("--status", help="pending, verifying, verified, failed or null"),
            arg("--lifecycle", help="pending, delivering, delivered, verified or failed"))
    command(groups, "resend", commands.resend, "send a profile to a host again with a fresh challenge",
            arg("host", metavar="HOST"), arg("profile", metavar="PROFILE"))
    command(groups, "trigger", commands.trigger, "run a job now", arg("job", metavar="JOB"))
    command(groups, "jobs", commands.jobs, "list jobs")
    builtin_ca.add_commands(command, group, arg)
    agent_credential.add_commands(command, group, arg)
    secret.add_commands(command, group, arg)
    backup.add_commands(command, groups, arg)
    database.add_commands(command, group, arg)
    return parser


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii").strip()
    except PermissionError:
        raise CliError(
            "cannot read the admin token file %s: permission denied; run as the user scepproxyd runs as, "
            "or pass --token-file" % (path,)
        ) from None
    except FileNotFoundError:
        raise CliError(
            "cannot read the admin token file %s: no such file; scepproxyd makes it on first start "
            "(wrong --config?)" % (path,)
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError("cannot read the admin token file %s: %s" % (path, getattr(e, "strerror", None) or e)) from None
    if not token:
        raise CliError("the admin token file %s is empty" % (path,))
    return token


def make_client(args) -> AdminClient:
    """
    The API client from ``--url``/``--token-file``, filling gaps from the daemon's INI file.

    Where the API is: ``--url``, else ``[admin] url``, else what ``[admin] listen``
    says (a ``systemd:`` socket says nothing a client can use: see ``target_from_endpoint``).
    """
    endpoint = None
    if args.api_url is None or args.token_file is None:
        try:
            endpoint = load_admin_endpoint(args.config)
        except ConfigError as e:
            raise InvocationError(str(e)) from None
    if args.api_url:
        target = target_from_url(args.api_url)
    elif endpoint.url:
        target = target_from_url(endpoint.url)
    else:
        target = target_from_endpoint(endpoint.listen)
    token_file = Path(args.token_file) if args.token_file else endpoint.token_file
    return AdminClient(target, _read_token(token_file), str(token_file), timeout=args.timeout)


def main(argv: list[str] | None = None, stdin=None, stdout=None, stderr=None) -> int:
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    argv = sys.argv[1:] if argv is None else list(argv)
    for option, what in _SECRET_OPTIONS:
        if any(a == option or a.startswith(option + "=") for a in argv):
            # Refused here, before argparse, whose "unrecognized arguments" would echo the value.
            print(
                "%s: there is no %s option: a %s on the command line lands in shell history "
                "and ps; use %s-file FILE, or give it on stdin" % (PROG, option, what, option),
                file=stderr,
            )
            return 2
    args = build_parser().parse_args(argv)
    try:
        # restore and database copy work offline, on the state: no API, no token.
        client = None if getattr(args, "offline", False) else make_client(args)
        answer, human = args.handler(client, args, stdin)
    except CliError as e:
        print(message("%s: %s" % (PROG, e)), file=stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("%s: interrupted" % (PROG,), file=stderr)
        return 130
    if args.json:
        if answer is not None:
            print(as_json(answer), file=stdout)
    else:
        print(message(human), file=stdout)
    return 0
