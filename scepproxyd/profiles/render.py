"""Render an accepted profile for one host, and build the proxy URL it carries.

Runs in the profile job for every (host, profile) pair, with the CA's
decrypted static challenge in hand, so it never logs and keeps secrets out of
its exceptions.
"""

from collections.abc import Mapping
from urllib.parse import quote

from scepproxyd.profiles import android, mobileconfig, syncml, variables
from scepproxyd.profiles.model import ANDROID_TEMPLATE, MOBILECONFIG, WINDOWS_SYNCML, ProfileError

PROXY_PATH = "/mdm/scep/proxy/"


def render_profile(
    kind: str,
    content: bytes,
    *,
    ca_challenge: str,
    proxy_url: str,
    renewal_id: str,
    host: Mapping[str, str | None] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> bytes:
    """Replace every variable in a profile accepted by L{parse_profile}.

    ``host`` holds the host variables' values (L{variables.host_values});
    ``secrets`` the custom secrets' values by name. A variable the profile
    uses without a value raises L{variables.MissingValue}, which names it.
    The Windows certificate ID renders to the renewal ID (see variables).
    Apple profiles get XML-escaped values and still parse as a plist;
    Android templates get the values inside JSON strings (DN-escaped in the
    subject) and stay valid JSON; Windows SyncML profiles get XML-escaped
    values and still parse as SyncML.
    """
    values = variables.Values(
        challenge=ca_challenge, proxy_url=proxy_url, renewal_id=renewal_id, host=host or {}, secrets=secrets or {}
    )
    if kind == MOBILECONFIG:
        return mobileconfig.render(content, values)
    if kind == ANDROID_TEMPLATE:
        return android.render(content, values)
    if kind == WINDOWS_SYNCML:
        return syncml.render(content, values)
    raise ProfileError("unknown profile kind %r" % (kind,))


def proxy_url(
    public_url: str, host_uuid: str, profile_uuid: str, ca_name: str, challenge: str
) -> str:
    """The URL a device enrolls through: what the proxy-URL variable renders to.

    The last segment is ``hostUUID,profileUUID,caName,challenge`` path-escaped
    as a whole (commas become ``%2C``), which is what
    L{scepproxyd.scep.identifier.parse_identifier} reads back.
    """
    identifier = ",".join((host_uuid, profile_uuid, ca_name, challenge))
    return public_url.rstrip("/") + PROXY_PATH + quote(identifier, safe="")
