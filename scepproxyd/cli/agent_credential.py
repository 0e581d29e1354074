"""``scepproxyctl agent-credential ...``: per-host agent credentials through the admin API.

Same shape as ``commands``: each returns ``(answer, text)``. ``issue`` prints
the new credential alone on stdout, so ``TOKEN=$(scepproxyctl
agent-credential issue HOST)`` works; ``issue-bulk`` writes ``host_uuid,token``
CSV to a new file (mode 0600) with ``--output``. A credential is shown only
by the command that issues it.
"""

from __future__ import annotations

import os

from scepproxyd.cli.client import CliError, InvocationError, api_path, list_all
from scepproxyd.cli.render import fields, table
from scepproxyd.files import open_new_private


def issue(api, args, stdin):
    _, answer = api.request("POST", api_path("hosts", args.host, "agent-credential"))
    return answer, answer["token"]


def show(api, args, stdin):
    _, c = api.request("GET", api_path("hosts", args.host, "agent-credential"))
    return c, fields([
        ("host", c["host_uuid"]), ("credential", "issued" if c["issued"] else "none"),
        ("created_at", c["created_at"]), ("last_used_at", c["last_used_at"]),
    ])


def revoke(api, args, stdin):
    api.request("DELETE", api_path("hosts", args.host, "agent-credential"))
    return None, "revoked the agent credential of host %s; its agent is refused from now on" % (args.host,)


def list_credentials(api, args, stdin):
    answer = list_all(api, "agent_credentials", "agent-credentials", query={"platform": args.platform})
    rows = answer["agent_credentials"]
    if not rows:
        return answer, "no agent credentials"
    return answer, table(("HOST", "CREATED", "LAST_USED"),
                         [(c["host_uuid"], c["created_at"], c["last_used_at"]) for c in rows])


def _open_new(path: str):
    """The output file, created now (before anything is issued), readable by its owner only."""
    try:
        return open_new_private(path, "w", encoding="ascii", newline="")
    except FileExistsError:
        raise CliError("%s already exists; give a new file for the credentials" % (path,)) from None
    except OSError as e:
        raise CliError("cannot create %s: %s" % (path, e.strerror or e)) from None


def issue_bulk(api, args, stdin):
    chosen = sum((bool(args.hosts), args.platform is not None, args.all))
    if chosen != 1:
        raise InvocationError("give host UUIDs, --platform or --all (exactly one of them)")
    body = {"rotate": args.rotate}
    if args.hosts:
        body["hosts"] = args.hosts
    elif args.platform is not None:
        body["platform"] = args.platform
    else:
        body["all"] = True
    output = _open_new(args.output) if args.output else None
    try:
        _, answer = api.request("POST", api_path("agent-credentials"), body)
    except BaseException:
        if output is not None:
            output.close()
            os.unlink(args.output)
        raise
    issued, kept = answer["issued"], answer["kept"]
    summary = "issued %d agent credential%s%s" % (
        len(issued), "" if len(issued) == 1 else "s",
        "; %d host%s already had one (--rotate replaces those)" % (kept, "" if kept == 1 else "s") if kept else "",
    )
    if output is not None:
        with output:
            output.write("host_uuid,token\n")
            for item in issued:
                output.write("%s,%s\n" % (item["host_uuid"], item["token"]))
        return answer, "%s; written to %s (mode 0600): hand each to its host's agent" % (summary, args.output)
    if not issued:
        return answer, summary
    return answer, table(("HOST", "TOKEN"), [(i["host_uuid"], i["token"]) for i in issued]) + "\n" + summary


def add_commands(command, group, arg) -> None:
    """Register the group on scepproxyctl's parser (called from ``build_parser``)."""
    agent = group("agent-credential", "per-host agent credentials for the agent API")
    host = arg("host", metavar="HOST", help="the host's UUID")
    command(agent, "issue", issue, "issue a host's agent credential (replacing any); prints it alone, once", host)
    command(agent, "rotate", issue, "same as issue: a new credential, and the old one stops working at once", host)
    command(agent, "show", show, "whether a host has an agent credential, and when it was made and last used",
            host)
    command(agent, "revoke", revoke, "revoke a host's agent credential; its agent is refused at once", host)
    command(agent, "list", list_credentials, "hosts that have an agent credential",
            arg("--platform", help="only hosts of this platform"))
    command(agent, "issue-bulk", issue_bulk, "issue agent credentials for many hosts at once; each shown once",
            arg("hosts", metavar="HOST", nargs="*"),
            arg("--platform", help="every host of this platform, instead of HOSTs"),
            arg("--all", action="store_true", help="every host"),
            arg("--rotate", action="store_true", help="also replace credentials hosts already have"),
            arg("--output", metavar="FILE", help="write host_uuid,token CSV to this new file (mode 0600) "
                                                 "instead of printing the tokens"))
