"""The admin JSON API under ``/api/v1/``: CAs, hosts, profiles, assignments, status, jobs.

Routes map HTTP to the store and the admin rules; nothing here returns or
logs a static challenge. The full contract is in docs/admin-api.md.
"""

import uuid as uuid_module
from functools import partial

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from scepproxyd import admin
from scepproxyd.delivery.lifecycle import LIFECYCLE, lifecycle
from scepproxyd.daemon.logs import get_logger
from scepproxyd.keys import KeyFileError
from scepproxyd.platforms import APPLE_PLATFORMS, PLATFORMS
from scepproxyd.profiles import (
    ANDROID_TEMPLATE,
    MOBILECONFIG,
    WINDOWS_SYNCML,
    ProfileError,
    checks,
    parse_profile,
    variables,
)
from scepproxyd.profiles.binding import UPLOAD_CHECK_END_USER, HostFacts, expected_request
from scepproxyd.scep import ra
from scepproxyd.store import (
    HOST_PROFILE_STATUSES,
    CertificateAuthority,
    DuplicateError,
    IdentifierInUseError,
    InUseError,
    NotFoundError,
    PlatformMismatchError,
    RaIdentityRecord,
)
from scepproxyd.timestamps import utc_iso_or_none as _time
from scepproxyd.daemon.tls import TLSConfigError, load_certificates
from scepproxyd.web.api import (
    Conflict,
    HttpRefusal,
    Invalid,
    NotFound,
    Page,
    field,
    json_body,
    off_reactor,
    one_of,
    query_choice,
    query_parameter,
    raw_body,
    refusing,
)

log = get_logger(__name__)

#: Stands in for a host profile's renewal ID when a profile is checked at upload.
UPLOAD_CHECK_RENEWAL_ID = "sp-0000000000000000"
#: The largest profile accepted unless ``[admin] max_profile_bytes`` says otherwise.
DEFAULT_MAX_PROFILE_BYTES = 1024 * 1024
#: Hosts written per store job in an import: small enough that the proxy's
#: store calls, queued behind one batch, wait milliseconds, not seconds.
IMPORT_BATCH = 2000


#: The admin rules' refusals are this API's 422, with their message and field.
_admin_rules = refusing(admin.InvalidAdminInput, lambda e: Invalid(e.message, field=e.field))


def ra_json(ca) -> dict | None:
    """The public half of a CA's RA identity: never its key."""
    if ca.ra_certificate is None:
        return None
    certificate = x509.load_der_x509_certificate(ca.ra_certificate)
    return {
        "certificate": "enrolled" if ca.ra_enrolled else "self-signed",
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": "%x" % (certificate.serial_number,),
        "not_after": _time(certificate.not_valid_after_utc.timestamp()),
        "sha256": certificate.fingerprint(hashes.SHA256()).hex(),
    }


def ca_json(ca, profiles=None) -> dict:
    body = {
        "name": ca.name,
        "url": ca.url,
        "mode": ca.mode,
        "tls_verify": ca.tls_verify,
        "trust_bundle": bool(ca.tls_trust_bundle),
        "ra": ra_json(ca),
        "created_at": _time(ca.created_at),
        "updated_at": _time(ca.updated_at),
    }
    if profiles is not None:
        body["profiles"] = profiles
    return body


def host_json(host) -> dict:
    return {
        "uuid": host.uuid,
        "serial": host.serial,
        "platform": host.platform,
        "created_at": _time(host.created_at),
        "updated_at": _time(host.updated_at),
    }


def host_detail_json(host) -> dict:
    """A host with its end-user attributes (null where none is recorded): what one host's answers show."""
    user = host.end_user
    body = host_json(host)
    for name in admin.END_USER_FIELDS:
        value = getattr(user, name) if user is not None else None
        body[name] = list(value or ()) if name == "idp_groups" else value
    return body


def profile_json(profile) -> dict:
    return {
        "uuid": profile.uuid,
        "name": profile.name,
        "identifier": profile.identifier,
        "platform": profile.platform,
        "kind": profile.kind,
        "ca": profile.ca_name,
        "variables": list(profile.variables),
        "created_at": _time(profile.created_at),
        "updated_at": _time(profile.updated_at),
    }


def host_profile_json(hp) -> dict:
    return {
        "host_uuid": hp.host_uuid,
        "profile_uuid": hp.profile_uuid,
        "status": hp.status,
        "detail": hp.detail,
        "retries": hp.retries,
        "lifecycle": lifecycle(hp.status, hp.command_status),
        "cert_serial": hp.cert_serial,
        "cert_not_after": _time(hp.cert_not_after),
        "updated_at": _time(hp.updated_at),
    }


# What the identifier is called in each kind of profile, for messages and ``field``.
_IDENTIFIER_FIELD = {MOBILECONFIG: "PayloadIdentifier", ANDROID_TEMPLATE: "name"}
_IDENTIFIER_LABEL = {MOBILECONFIG: "PayloadIdentifier", ANDROID_TEMPLATE: "template name"}


def _identifier_in_use_message(error: IdentifierInUseError) -> str:
    return "%s %r is already used by profile %s (%s); give this one another %s, or delete that profile first" % (
        _IDENTIFIER_LABEL[error.kind], error.identifier, error.profile_uuid, error.profile_name,
        _IDENTIFIER_LABEL[error.kind],
    )


def profile_too_large(limit: int) -> str:
    return "profile larger than %d bytes; the limit is [admin] max_profile_bytes" % (limit,)


def admin_route_limits(max_profile_bytes: int) -> list:
    """The admin site's per-route body limits (BodyLimitedSite ``route_limits``): the profile upload's."""
    return [(b"POST", b"/api/v1/profiles", max_profile_bytes, profile_too_large(max_profile_bytes), "profile")]


class AdminRoutes:
    """Handlers for the admin API; collaborators come in, nothing is global."""

    def __init__(self, store, upstream, cipher, jobs: dict, trust=None, *, reactor,
                 max_profile_bytes: int = DEFAULT_MAX_PROFILE_BYTES):
        self._reactor = reactor
        self._max_profile_bytes = max_profile_bytes
        self._store = store
        self._upstream = upstream
        self._cipher = cipher
        self._jobs = jobs
        self._trust = trust

    async def _apply_trust(self, candidate=None) -> None:
        """Load every CA's TLS trust into the upstream client (plus one being checked)."""
        if self._trust is None:
            return
        cas = await self._store.list_cas()
        if candidate is not None:
            cas = [ca for ca in cas if ca.name != candidate.name] + [candidate]
        self._trust.configure(cas)
        # A pooled connection made under the old trust must not answer for the new one.
        await self._upstream.drop_connections()

    @staticmethod
    def _tls_fields(body) -> tuple[str | None, bool | None]:
        bundle = field(body, "trust_bundle", required=False)
        verify = field(body, "tls_verify", kind=bool, required=False)
        if bundle:
            try:
                load_certificates(bundle.encode("utf-8", "replace"), "trust_bundle")
            except TLSConfigError as e:
                raise Invalid(str(e), field="trust_bundle") from None
        return bundle, verify

    def routes(self):
        ca = r"/api/v1/cas/(?P<name>[^/]+)"
        host = r"/api/v1/hosts/(?P<uuid>[^/]+)"
        profile = r"/api/v1/profiles/(?P<uuid>[^/]+)"
        return [
            ("GET", r"/api/v1/cas", self.list_cas),
            ("POST", r"/api/v1/cas", self.add_ca),
            ("GET", ca, self.get_ca),
            ("PATCH", ca, self.edit_ca),
            ("DELETE", ca, self.delete_ca),
            ("GET", r"/api/v1/hosts", self.list_hosts),
            ("POST", r"/api/v1/hosts/import", self.import_hosts),
            ("GET", host, self.get_host),
            ("PUT", host, self.put_host),
            ("PATCH", host, self.patch_host),
            ("DELETE", host, self.delete_host),
            ("GET", r"/api/v1/profiles", self.list_profiles),
            ("POST", r"/api/v1/profiles", self.upload_profile),
            ("GET", profile, self.get_profile),
            ("DELETE", profile, self.delete_profile),
            ("POST", profile + r"/assign", self.assign),
            ("POST", profile + r"/unassign", self.unassign),
            ("GET", r"/api/v1/host-profiles", self.list_host_profiles),
            ("POST", r"/api/v1/host-profiles/(?P<host>[^/]+)/(?P<profile>[^/]+)/resend", self.resend),
            ("GET", r"/api/v1/jobs", self.list_jobs),
            ("POST", r"/api/v1/jobs/(?P<name>[^/]+)", self.trigger),
        ]

    # -- CAs ---------------------------------------------------------------

    async def list_cas(self, request):
        page = Page(request, "cas", 1)
        cas = await self._store.list_cas(after=page.after, limit=page.limit + 1)
        using = {ca.name: await self._store.profiles_using_ca(ca.name) for ca in cas[:page.limit]}
        return page.answer(cas, lambda ca: (ca.name,), lambda ca: ca_json(ca, using[ca.name]))

    async def get_ca(self, request, name):
        ca = await self._store.get_ca(name)
        if ca is None:
            raise NotFound("no CA named %r" % (name,))
        return ca_json(ca, await self._store.profiles_using_ca(name))

    @_admin_rules
    async def add_ca(self, request):
        body = json_body(request)
        name = admin.check_ca_name(field(body, "name"))
        url = admin.check_ca_url(field(body, "url"))
        challenge = admin.check_challenge(field(body, "challenge"))
        bundle, verify = self._tls_fields(body)
        mode = admin.check_ca_mode(field(body, "mode", required=False) or "passthrough")
        source = admin.check_ra_certificate(field(body, "ra_certificate", required=False), mode)
        if await self._store.get_ca(name) is not None:
            raise Conflict("a CA named %r already exists" % (name,), field="name")
        candidate = CertificateAuthority(name, url, None, 0.0, 0.0, bundle, True if verify is None else verify)
        try:
            await self._apply_trust(candidate)
            await admin.check_ca_answers(self._upstream, url)
            identity = None
            if mode == "ra":
                identity = await self._ra_identity(name, url, challenge, source or "enroll")
            ca = await self._store.add_ca(name, url, self._cipher.encrypt(challenge), bundle or None,
                                          True if verify is None else verify, mode=mode, ra=identity)
        except DuplicateError:
            raise Conflict("a CA named %r already exists" % (name,), field="name") from None
        finally:
            await self._apply_trust()
        log.info("admin added CA {ca} at {url}", ca=name, url=url)
        return (201, ca_json(ca, []))

    @_admin_rules
    async def edit_ca(self, request, name):
        body = json_body(request)
        unknown = set(body) - {"name", "url", "challenge", "trust_bundle", "tls_verify", "mode", "ra_certificate"}
        if unknown:
            raise Invalid(
                "unknown field %s; a CA has name, url, challenge, trust_bundle, tls_verify, mode, ra_certificate"
                % (sorted(unknown)[0],),
                field=sorted(unknown)[0],
            )
        current = await self._store.get_ca(name)
        if current is None:
            raise NotFound("no CA named %r" % (name,))
        new_name = field(body, "name", required=False)
        url = field(body, "url", required=False)
        challenge = field(body, "challenge", required=False)
        if new_name is not None:
            admin.check_ca_name(new_name)
        if url is not None and url != current.url:
            admin.check_ca_url(url)
            if challenge is None:
                raise Invalid("changing the URL requires the challenge again", field="challenge")
        if challenge is not None:
            admin.check_challenge(challenge)
        mode = field(body, "mode", required=False)
        if mode is not None:
            admin.check_ca_mode(mode)
        if mode == "ra" and current.builtin:
            raise Invalid("the built-in CA applies the issuance policy itself; it has no RA mode", field="mode")
        new_mode = mode or current.mode
        source = admin.check_ra_certificate(field(body, "ra_certificate", required=False), new_mode)
        url_changes = url is not None and url != current.url
        if new_mode == "ra" and source is None and (current.ra_certificate is None or url_changes):
            # A new CA (or a first RA) needs a new RA identity, made the way the last one was.
            source = "self-signed" if current.ra_certificate is not None and not current.ra_enrolled else "enroll"
        bundle, verify = self._tls_fields(body)
        trust_changes = bundle is not None or verify is not None
        try:
            candidate = attrs.evolve(
                current,
                url=url or current.url,
                tls_trust_bundle=current.tls_trust_bundle if bundle is None else (bundle or None),
                tls_verify=current.tls_verify if verify is None else verify,
            )
            if url_changes or trust_changes:
                await self._apply_trust(candidate)
                await admin.check_ca_answers(self._upstream, candidate.url)
            identity = None
            if source is not None:
                if not (url_changes or trust_changes):
                    await self._apply_trust(candidate)
                # A self-signed RA needs no challenge: one that no longer decrypts must not stop it.
                enrollment_challenge = challenge
                if enrollment_challenge is None and source == "enroll":
                    enrollment_challenge = self._stored_challenge(current)
                identity = await self._ra_identity(new_name or name, candidate.url, enrollment_challenge, source)
            ca = await self._store.update_ca(
                name,
                new_name=new_name if new_name != name else None,
                url=url,
                challenge_ciphertext=self._cipher.encrypt(challenge) if challenge is not None else None,
                tls_trust_bundle=bundle,
                tls_verify=verify,
                mode=mode,
                ra=identity,
                # An RA identity from the CA at the old URL is no use at the new one.
                forget_ra=url_changes and identity is None,
            )
        except InUseError as e:
            raise Conflict(
                "CA %r is used by profiles %s; its name ties them and their renewals to it"
                % (name, ", ".join(e.profiles)),
                field="name",
            ) from None
        except DuplicateError:
            raise Conflict("a CA named %r already exists" % (new_name,), field="name") from None
        finally:
            await self._apply_trust()
        self._upstream.forget(current.url)
        log.info("admin changed CA {ca}", ca=ca.name)
        return ca_json(ca, await self._store.profiles_using_ca(ca.name))

    async def _ra_identity(self, name: str, url: str, challenge: str | None, source: str) -> RaIdentityRecord:
        """A new RA identity for the CA at ``url`` (enrolled there, or self-signed), sealed for the store."""
        try:
            identity = await ra.new_identity(self._upstream, name, url, challenge, source,
                                             run_in_thread=partial(off_reactor, self._reactor))
        except ra.RaIdentityError as e:
            raise Invalid("no RA certificate: %s" % (e,), field="ra_certificate") from None
        key_ciphertext, certificate = identity.sealed(self._cipher)
        log.info("admin made a new {source} RA identity for CA {ca}: {subject} issued by {issuer}",
                 source="enrolled" if identity.enrolled else "self-signed", ca=name,
                 subject=identity.certificate.subject.rfc4514_string(),
                 issuer=identity.certificate.issuer.rfc4514_string())
        return RaIdentityRecord(key_ciphertext, certificate, identity.enrolled)

    def _stored_challenge(self, ca) -> str | None:
        """The CA's stored static challenge, for the RA's enrollment; 422 if the secrets key no longer opens it."""
        if not ca.challenge_ciphertext:
            return None
        try:
            return self._cipher.decrypt(ca.challenge_ciphertext)
        except KeyFileError:
            raise Invalid(
                "the CA's stored challenge does not decrypt with the current secrets key (was it replaced?); "
                "give the challenge again to enroll a new RA certificate", field="challenge",
            ) from None

    async def delete_ca(self, request, name):
        try:
            await self._store.delete_ca(name)
        except NotFoundError:
            raise NotFound("no CA named %r" % (name,)) from None
        except InUseError as e:
            raise Conflict("CA %r is used by profiles %s; delete those first" % (name, ", ".join(e.profiles))) from None
        await self._apply_trust()
        log.info("admin deleted CA {ca}", ca=name)
        return (204, None)

    # -- hosts -------------------------------------------------------------

    async def list_hosts(self, request):
        platform = query_choice(request, "platform", PLATFORMS)
        page = Page(request, "hosts", 1)
        hosts = await self._store.list_hosts(platform, after=page.after, limit=page.limit + 1)
        return page.answer(hosts, lambda h: (h.uuid,), host_json)

    async def get_host(self, request, uuid):
        host = await self._store.get_host(uuid)
        if host is None:
            raise NotFound("no host %r" % (uuid,))
        profiles = await self._store.list_host_profiles(host_uuid=uuid)
        return dict(host_detail_json(host), profiles=[host_profile_json(hp) for hp in profiles])

    @_admin_rules
    async def put_host(self, request, uuid):
        body = json_body(request)
        uuid, serial, platform = admin.check_host(uuid, body.get("serial"), body.get("platform"))
        end_user = admin.check_end_user(body)
        existing = await self._store.get_host(uuid)
        if existing is not None and existing.platform != platform:
            assigned = await self._store.list_host_profiles(host_uuid=uuid)
            if assigned:
                raise Conflict(
                    "host %s has profiles for %s; unassign them before changing its platform"
                    % (uuid, existing.platform),
                    field="platform",
                )
        created = await self._store.upsert_host(uuid, serial, platform, end_user=end_user)
        host = await self._store.get_host(uuid)
        return (201 if created else 200, host_detail_json(host))

    @_admin_rules
    async def patch_host(self, request, uuid):
        """Change some of a known host: serial and end-user attributes; what a field is absent from stays."""
        body = json_body(request)
        unknown = sorted(set(body) - {"serial", *admin.END_USER_FIELDS})
        if unknown:
            raise Invalid("unknown field %s; a host's platform is changed with PUT" % (unknown[0],), field=unknown[0])
        if not body:
            raise Invalid("nothing to change; give serial or any of %s" % (", ".join(admin.END_USER_FIELDS),))
        kwargs = {"end_user": admin.check_end_user(body)}
        if "serial" in body:
            kwargs["serial"] = admin.check_host(uuid, body["serial"], "macos")[1]
        try:
            host, sent = await self._store.update_host(uuid, **kwargs)
        except NotFoundError:
            raise NotFound("no host %r" % (uuid,)) from None
        log.info("admin changed host {host} ({fields}); {resent} host profiles sent again",
                 host=uuid, fields=", ".join(sorted(body)), resent=len(sent))
        return dict(host_detail_json(host), resent=len(sent))

    async def delete_host(self, request, uuid):
        if not await self._store.delete_host(uuid):
            raise NotFound("no host %r" % (uuid,))
        return (204, None)

    @raw_body
    @_admin_rules
    async def import_hosts(self, request):
        """
        Parse and check every row on a worker thread, then write in batches of IMPORT_BATCH.

        Each batch is its own store job and transaction, so device-facing
        store calls run between batches instead of waiting for the whole
        import. A bad row refuses the import before anything is written; a
        failure while writing (a full disk) can leave earlier batches in,
        and the same import sent again completes it (every row is an upsert).
        """
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1").lower()
        content = request.content
        rows = await off_reactor(self._reactor, lambda: admin.parse_host_import(content.read(), content_type))
        created = updated = 0
        for start in range(0, len(rows), IMPORT_BATCH):
            batch_created, batch_updated = await self._store.import_hosts_batch(rows[start:start + IMPORT_BATCH])
            created += batch_created
            updated += batch_updated
        log.info("admin imported {count} hosts ({created} new)", count=len(rows), created=created)
        return {"created": created, "updated": updated}

    # -- profiles ----------------------------------------------------------

    async def list_profiles(self, request):
        page = Page(request, "profiles", 2)
        profiles = await self._store.list_profiles(after=page.after, limit=page.limit + 1)
        return page.answer(profiles, lambda p: (p.name, p.uuid), profile_json)

    async def get_profile(self, request, uuid):
        profile = await self._store.get_profile(uuid)
        if profile is None:
            raise NotFound("no profile %r" % (uuid,))
        body = profile_json(profile)
        body["hosts"] = await self._store.count_host_profiles(uuid)
        return body

    async def _check_enforceable(self, kind: str, content: bytes, platform: str) -> None:
        """
        A profile for the built-in CA must say only what its issuance policy can check.

        Refused here, once, rather than at every device's enrollment: a
        subject attribute, subjectAltName or key setting the policy cannot
        read would fail every request the profile renders.
        """
        try:
            await off_reactor(
                self._reactor, expected_request, kind, content, renewal_id=UPLOAD_CHECK_RENEWAL_ID,
                host=HostFacts(uuid="-", serial="-", platform=platform, end_user=UPLOAD_CHECK_END_USER),
            )
        except ProfileError as e:
            raise Invalid("the built-in CA cannot enforce this profile: %s" % (e,), field="profile") from None

    @raw_body
    async def upload_profile(self, request):
        # The admin site refuses a larger body while it streams in; this also
        # covers a site without that per-path limit.
        content = request.content.read(self._max_profile_bytes + 1)
        if len(content) > self._max_profile_bytes:
            raise HttpRefusal(profile_too_large(self._max_profile_bytes), field="profile", status=413)
        content_type = (request.getHeader(b"Content-Type") or b"").decode("latin-1")
        try:
            # Parsing and checking a profile is CPU work that grows with its size.
            parsed = await off_reactor(self._reactor, parse_profile, content, content_type)
        except ProfileError as e:
            raise Invalid(str(e), field=getattr(e, "field", None) or "profile") from None
        platform = query_parameter(request, "platform")
        if parsed.kind == ANDROID_TEMPLATE:
            if platform not in (None, "android"):
                raise Invalid("an Android certificate template is for platform android", field="platform")
            platform = "android"
        elif parsed.kind == WINDOWS_SYNCML:
            if platform not in (None, "windows"):
                raise Invalid("a Windows SyncML profile is for platform windows", field="platform")
            platform = "windows"
        else:
            platform = platform or "macos"
            if platform not in APPLE_PLATFORMS:
                raise Invalid(
                    "a .mobileconfig is for platform %s" % (", ".join(APPLE_PLATFORMS),), field="platform"
                )
        ca = await self._store.get_ca(parsed.ca_name) if parsed.ca_name is not None else None
        if parsed.ca_name is not None and ca is None:
            raise Invalid(
                "profile uses CA %r, which does not exist; add it first" % (parsed.ca_name,), field="profile"
            )
        missing = await self._store.missing_secrets(variables.secret_names(parsed.variables))
        if missing:
            raise Invalid(checks.missing_secret(missing[0]), field="profile")
        if ca is not None and ca.builtin:
            await self._check_enforceable(parsed.kind, content, platform)
        profile_uuid = str(uuid_module.uuid4())
        name = query_parameter(request, "name", stored=True) or parsed.name
        try:
            await self._store.add_profile(
                profile_uuid, name, platform, content, parsed.ca_name,
                kind=parsed.kind, identifier=parsed.identifier, variables=parsed.variables,
            )
        except IdentifierInUseError as e:
            raise Conflict(_identifier_in_use_message(e), field=_IDENTIFIER_FIELD[e.kind]) from None
        except NotFoundError:
            raise Invalid("profile uses CA %r, which does not exist" % (parsed.ca_name,), field="profile") from None
        log.info("admin uploaded profile {profile} ({name}) for {platform}", profile=profile_uuid, name=name, platform=platform)
        return (201, profile_json(await self._store.get_profile(profile_uuid)))

    async def delete_profile(self, request, uuid):
        if not await self._store.delete_profile(uuid):
            raise NotFound("no profile %r" % (uuid,))
        log.info("admin deleted profile {profile}", profile=uuid)
        return (204, None)

    def _hosts_or_platform(self, body):
        hosts = field(body, "hosts", kind=list, required=False)
        platform = field(body, "platform", required=False)
        if (hosts is None) == (platform is None):
            raise Invalid("give either hosts (a list of host UUIDs) or platform", field="hosts")
        if hosts is not None:
            if not hosts or not all(isinstance(h, str) and h for h in hosts):
                raise Invalid("hosts must be a non-empty list of host UUIDs", field="hosts")
        one_of(platform, "platform", PLATFORMS)
        return hosts, platform

    async def assign(self, request, uuid):
        hosts, platform = self._hosts_or_platform(json_body(request))
        profile = await self._store.get_profile(uuid)
        if profile is None:
            raise NotFound("no profile %r" % (uuid,))
        try:
            if hosts is not None:
                count = await self._store.assign_profile_to_hosts(uuid, hosts)
            else:
                count = await self._store.assign_profile_to_platform(uuid, platform)
        except PlatformMismatchError as e:
            if e.host_uuid is None:
                message = "profile %s is for %s, not %s" % (uuid, e.profile_platform, e.host_platform)
            else:
                message = "host %s is %s but profile %s is for %s" % (
                    e.host_uuid, e.host_platform, uuid, e.profile_platform)
            raise Invalid(message, field="platform" if e.host_uuid is None else "hosts") from None
        except NotFoundError as e:
            raise Invalid(str(e), field="hosts") from None
        return {"assigned": count}

    async def unassign(self, request, uuid):
        body = json_body(request)
        hosts = field(body, "hosts", kind=list, required=False)
        if hosts is not None and not all(isinstance(h, str) and h for h in hosts):
            raise Invalid("hosts must be a list of host UUIDs", field="hosts")
        if await self._store.get_profile(uuid) is None:
            raise NotFound("no profile %r" % (uuid,))
        return {"unassigned": await self._store.unassign_profile(uuid, hosts)}

    # -- status and jobs ---------------------------------------------------

    async def list_host_profiles(self, request):
        status = query_choice(request, "status", [s for s in HOST_PROFILE_STATUSES if s] + ["null"])
        stage = query_choice(request, "lifecycle", LIFECYCLE)
        page = Page(request, "host_profiles", 2)
        kwargs = {"host_uuid": query_parameter(request, "host"), "profile_uuid": query_parameter(request, "profile")}
        if any("\0" in value for value in kwargs.values() if value):
            return {"host_profiles": [], "next": None}  # no id holds a NUL (the store never receives one)
        if status is not None:
            kwargs["status"] = status
        if stage is not None:
            kwargs["lifecycle"] = stage
        rows = await self._store.list_host_profiles(**kwargs, after=page.after, limit=page.limit + 1)
        return page.answer(rows, lambda hp: (hp.host_uuid, hp.profile_uuid), host_profile_json)

    async def resend(self, request, host, profile):
        hp = await self._store.resend_host_profile(host, profile)
        if hp is None:
            raise NotFound("profile %s is not assigned to host %s" % (profile, host))
        log.info("admin resent profile {profile} to host {host}", profile=profile, host=host)
        return host_profile_json(hp)

    async def list_jobs(self, request):
        return {"jobs": sorted(self._jobs)}

    async def trigger(self, request, name):
        job = self._jobs.get(name)
        if job is None:
            raise NotFound("no job %r; jobs are %s" % (name, ", ".join(sorted(self._jobs))))
        result = await job.trigger()
        return {"job": name, "result": result}
