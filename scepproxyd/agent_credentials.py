"""Per-host agent credentials: how they are made, and how a request's credential names its host.

Each host's agent holds a bearer credential for that host only, issued by the
admin (docs/agent-api.md). It is ``scepagent_`` and 32 random bytes in
base64url, shown once; the store keeps only its SHA-256, so a copy of the
database lets nobody act as an agent. A request is looked up by that hash.
"""

from __future__ import annotations

import hashlib
import secrets

from scepproxyd.daemon.logs import get_logger

log = get_logger(__name__)

#: Recognisable in a leaked file or a paste, and by secret scanners.
PREFIX = "scepagent_"
_RANDOM_BYTES = 32
#: Longer than any credential we make; anything longer is not looked up.
_MAX_PRESENTED = 128
#: last_used_at is written at most this often per credential, not on every request.
USED_RESOLUTION = 60.0


def credential_hash(token: str | bytes) -> str:
    if isinstance(token, str):
        token = token.encode("utf-8", "replace")
    return hashlib.sha256(token).hexdigest()


def new_agent_credential() -> tuple[str, str]:
    """A fresh ``(credential, sha256 hex)``; only the hash is ever stored."""
    token = PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)
    return token, credential_hash(token)


class HostCredentials:
    """The agent API's bearer check: a credential identifies its host, and only that host's paths."""

    def __init__(self, store, clock):
        self._store = store
        self._clock = clock

    async def identify(self, presented: bytes) -> str | None:
        """The uuid of the host whose credential this is, or None."""
        if not presented.startswith(PREFIX.encode()) or len(presented) > _MAX_PRESENTED:
            return None
        token_hash = credential_hash(presented)
        identity = await self._store.agent_identity(token_hash)
        if identity is None:
            return None
        now = self._clock.seconds()
        if identity.last_used_at is None or now - identity.last_used_at >= USED_RESOLUTION:
            await self._store.agent_credential_used(token_hash, now)
        return identity.host_uuid

    def permits(self, host_uuid: str, params: dict) -> bool:
        """Only paths naming the credential's own host; any other looks like a wrong credential."""
        asked = params.get("host")
        if asked != host_uuid:
            log.warn(
                "refused an agent request for host {asked} made with the agent credential of host {host}",
                asked=asked, host=host_uuid,
            )
            return False
        return True
