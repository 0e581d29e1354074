"""A site with an upstream CA in RA mode, set up through the admin and agent APIs, and the devices' view of it.

``ra_site`` adds a CA integration (``ra`` mode unless told) and a Mac with
the built-in CA's Wi-Fi profile (OU + CN with the renewal ID) pointed at that
CA; ``deliver`` does what the agent and the Mac do with it. Several CA
integrations and hosts can share one daemon: each call names its own.
"""

from support.api import Api, aissue_agent_credential
from support.clients import pki, strongswan_key
from support.site import OU, bound_mobileconfig, scep_settings_from_mobileconfig
from support.upstream import CHALLENGE as STATIC

HOST = "RA-MAC-1"
CA_NAME = "CORP_CA"


async def ra_site(daemon, upstream, mode="ra", host=HOST, **ca_fields):
    """A CA integration on ``upstream`` (its URL, or anything with a ``url``) in ``mode``, ``host`` with its agent
    and the Fleet Wi-Fi profile on that CA assigned: (admin, agent, profile uuid, CA's JSON).

    ``ca_fields`` add to or override the CA's JSON (``name`` CORP_CA, ``challenge`` scepserver's static one).
    """
    admin = Api(daemon.admin_url, daemon.admin_token)
    url = upstream if isinstance(upstream, str) else upstream.url
    fields = {"name": CA_NAME, "url": url, "challenge": STATIC, "mode": mode, **ca_fields}
    ca = await admin.acall("POST", "/api/v1/cas", fields)
    agent = await add_host(admin, daemon, host)
    # OU then CN, in the order scepclient writes them; one profile (identifier) per CA integration.
    profile = await admin.acall("POST", "/api/v1/profiles?platform=macos", raw=bound_mobileconfig(fields["name"]),
                                content_type="application/x-apple-aspen-config")
    await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile["uuid"], {"hosts": [host]})
    return admin, agent, profile["uuid"], ca


async def add_host(admin, daemon, host, profile=None):
    """``host`` (serial SER-<host>) with its agent's credential, assigned ``profile`` if given: its agent Api."""
    await admin.acall("PUT", "/api/v1/hosts/" + host, {"serial": "SER-" + host, "platform": "macos"})
    if profile is not None:
        await admin.acall("POST", "/api/v1/profiles/%s/assign" % profile, {"hosts": [host]})
    return Api(daemon.url, await aissue_agent_credential(admin, host))


async def deliver(admin, agent, profile, host=HOST):
    """Process, then fetch as the agent: (proxy URL, challenge, CN as the Mac expands it)."""
    await admin.acall("POST", "/api/v1/jobs/process_profiles")
    commands = (await agent.acall("GET", "/api/v1/agent/hosts/%s/commands" % host))["commands"]
    (command,) = [c for c in commands if c["profile_uuid"] == profile]
    url, challenge, cn = scep_settings_from_mobileconfig(command["payload"])
    return url, challenge, cn.replace("%SerialNumber%", "SER-" + host)


def strongswan_ra_certificates(workdir, url):
    """``pki --scepca`` through the proxy URL: (CA certificate, RA certificate), DER files in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, ra = workdir / "ca.der", workdir / "ra.der"
    result = pki("--scepca", "--url", url, "--caout", str(ca), "--raout", str(ra))
    assert result.returncode == 0, result.stderr.decode()
    return ca, ra


def strongswan_args(workdir, url, challenge, cn, *extra):
    """``pki --scep`` arguments for the Fleet profile's subject through an RA (a new key in ``workdir``)."""
    ca, ra = strongswan_ra_certificates(workdir, url)
    key = strongswan_key(workdir / "key.der")
    return ["--scep", "--url", url, "--in", str(key), "--dn", "OU=%s, CN=%s" % (OU, cn), "--password", challenge,
            "--cacert-enc", str(ra), "--cacert-sig", str(ra), "--cacert", str(ca), "--outform", "der", *extra]
