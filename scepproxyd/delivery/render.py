"""Turn a claimed command into the bytes a device installs, with a fresh challenge.

Rendering happens at hand-over (when an agent fetches the command, or when a
push backend sends it), so the challenge's TTL starts when the device can
actually get the profile. Each rendering mints a new challenge and retires
the host profile's older ones: only the newest copy of the profile enrolls.
"""

import attrs
from twisted.internet import threads

from scepproxyd.daemon.logs import get_logger
from scepproxyd.profiles import ANDROID_TEMPLATE, WINDOWS_SYNCML, proxy_url, render_profile, variables
from scepproxyd.store.models import challenge_hash, mint_challenge

log = get_logger(__name__)

CONTENT_TYPES = {
    ANDROID_TEMPLATE: "application/json",
    # SyncML commands without a SyncML envelope (docs/agent-api.md, Windows SyncML commands).
    WINDOWS_SYNCML: "application/vnd.syncml.dm+xml",
}
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"


@attrs.frozen
class RenderedCommand:
    command_uuid: str
    host_uuid: str
    profile_uuid: str
    kind: str
    content_type: str
    payload: bytes = attrs.field(repr=False)


class HostProfileFailed(Exception):
    """
    The host profile cannot be rendered for its host (a value is missing) and has been marked 'failed'.

    ``str()`` is the detail recorded on it, naming the variable (never a
    value). The caller skips the command; nothing is delivered.
    """


class CommandRenderer:
    """
    Mints the challenges (store), decrypts an upstream CA's static challenge, renders off the reactor.

    A profile that names the built-in CA never carries a reusable secret:
    its challenge variable becomes a one-time CA challenge minted for that
    host profile (kept only as a hash), which authorises one certificate
    request bound to it under ``builtin_template``.
    """

    def __init__(self, store, cipher, public_url: str, reactor, metrics=None, builtin_template: str = "default"):
        self._store = store
        self._cipher = cipher
        self._public_url = public_url
        self._reactor = reactor
        self._metrics = metrics
        self._builtin_template = builtin_template

    async def _ca_challenge(self, job) -> str:
        if job.ca_builtin:
            ca_challenge = mint_challenge()
            await self._store.issue_host_profile_ca_challenge(
                job.host_uuid, job.profile_uuid, challenge_hash(ca_challenge), self._builtin_template
            )
            return ca_challenge
        return self._cipher.decrypt(job.challenge_ciphertext) if job.challenge_ciphertext else ""

    async def _fail(self, job, detail: str) -> None:
        await self._store.render_failed(job.command_uuid, detail)
        log.warn("host profile failed for host {host} profile {profile}: {detail}",
                 host=job.host_uuid, profile=job.profile_uuid, detail=detail)
        raise HostProfileFailed(detail)

    async def _host_values(self, job) -> tuple[dict, dict]:
        """The host's values and the profile's secrets (opened); HostProfileFailed when one is missing.

        Checked before a challenge is minted: a host without a value the
        profile renders gets no challenge, and fails until the value is set.
        """
        if not variables.needs_host_values(job.variables):
            return {}, {}  # most profiles: nothing more to read
        inputs = await self._store.render_inputs(job.host_uuid, job.profile_uuid)
        if inputs is None:
            return {}, {}
        missing = variables.first_missing(inputs.variables, inputs.host, inputs.sealed_secrets)
        if missing is not None:
            await self._fail(job, str(variables.MissingValue(missing)))
        secrets = {name: self._cipher.decrypt(sealed) for name, sealed in inputs.sealed_secrets.items()}
        return inputs.host, secrets

    async def render(self, job) -> RenderedCommand:
        """The command's payload; HostProfileFailed (the host profile marked 'failed') when a value is missing."""
        host, secrets = await self._host_values(job)
        challenge = await self._store.issue_challenge(job.host_uuid, job.profile_uuid)
        if self._metrics is not None:
            self._metrics.challenge("minted")
        static = await self._ca_challenge(job)
        url = proxy_url(self._public_url, job.host_uuid, job.profile_uuid, job.ca_name or "", challenge)
        try:
            payload = await threads.deferToThreadPool(
                self._reactor,
                self._reactor.getThreadPool(),
                render_profile,
                job.kind,
                job.content,
                ca_challenge=static,
                proxy_url=url,
                renewal_id=job.renewal_id,
                host=host,
                secrets=secrets,
            )
        except variables.MissingValue as e:
            await self._fail(job, str(e))
        return RenderedCommand(
            job.command_uuid,
            job.host_uuid,
            job.profile_uuid,
            job.kind,
            CONTENT_TYPES.get(job.kind, MOBILECONFIG_TYPE),
            payload,
        )
