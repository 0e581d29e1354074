"""``/healthz``, ``/readyz`` and ``/metrics``, on the device-facing listener and the admin listener.

/healthz is for "restart me?" (the database answers, the listeners are up);
/readyz is for "send me traffic?" (also: database writes work, every CA
answered recently). A full disk makes /readyz fail but not /healthz: a
restart does not free space. Both do their checking off the reactor thread
and answer plain text. The admin listener serves them too (no token), so a
device listener at its connection cap cannot make a monitor think the
daemon is dead.
"""

from twisted.internet import defer
from twisted.web import resource

from scepproxyd.daemon.logs import get_logger
from scepproxyd.web.later import answer_later

log = get_logger(__name__)


def _answer(request, code: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8"):
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    request.write(body)
    request.finish()


class _AsyncLeaf(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        d = defer.ensureDeferred(self.check())

        def failed(failure):
            log.failure("{path} check failed", failure, path=request.path.decode("ascii", "replace"))
            return (503, b"unhealthy: internal error\n")

        d.addErrback(failed)
        return answer_later(request, d, lambda request, answer: _answer(request, *answer))


class Health(_AsyncLeaf):
    def __init__(self, store, listeners, started=lambda: True):
        super().__init__()
        self._store = store
        self._listeners = listeners
        self._started = started

    async def problems(self) -> list[str]:
        problems = []
        if not self._started():
            # Listeners are bound before the database is open and start-up work is done.
            return ["starting"]
        try:
            await self._store.ping()
        except Exception as e:  # any database failure means unhealthy
            problems.append("database: %s" % (type(e).__name__,))
        for svc in self._listeners:
            if not svc.running:
                problems.append("listener %s is not running" % (svc.name,))
        return problems

    async def check(self):
        problems = await self.problems()
        if problems:
            return 503, ("unhealthy: %s\n" % ("; ".join(problems),)).encode()
        return 200, b"ok\n"


class Ready(Health):
    """Also requires every CA integration to have answered within ``max_age`` seconds."""

    def __init__(self, store, listeners, ca_monitor, started=lambda: True):
        super().__init__(store, listeners, started)
        self._ca_monitor = ca_monitor

    async def check(self):
        problems = await self.problems()
        if self._store.write_problem is not None:
            problems.append("database writes fail: %s" % (self._store.write_problem,))
        problems.extend(await self._ca_monitor.problems())
        if problems:
            return 503, ("not ready: %s\n" % ("; ".join(problems),)).encode()
        return 200, b"ready\n"


class HealthBeside(resource.Resource):
    """The admin listener's root: the health pages by name, everything else to the admin API.

    The health pages need no token (they say nothing an attacker could use
    that the device listener's copies do not); the API keeps its own
    dispatch, including its JSON 404 for unknown paths.
    """

    def __init__(self, api, pages: dict):
        super().__init__()
        self._api = api
        self._pages = pages

    def getChildWithDefault(self, name, request):
        if name in self._pages and not request.postpath:
            return self._pages[name]
        # Hand the whole path to the API, which routes on request.path.
        request.postpath.insert(0, request.prepath.pop())
        return self._api

    def render(self, request):
        return self._api.render(request)


class MetricsPage(_AsyncLeaf):
    def __init__(self, store, metrics):
        super().__init__()
        self._store = store
        self._metrics = metrics

    async def check(self):
        self._metrics.set_host_profile_counts(await self._store.count_host_profiles_by_status())
        return 200, self._metrics.render(), self._metrics.content_type


class CaMonitor:
    """Is every CA integration reachable? Asks GetCACaps (cached answers count as recent)."""

    def __init__(self, store, upstream):
        self._store = store
        self._upstream = upstream

    async def problems(self) -> list[str]:
        from scepproxyd.scep.upstream import UpstreamError

        problems = []
        for ca in await self._store.list_cas():
            try:
                answer = await self._upstream.get_ca_caps(ca.url)
            except UpstreamError as e:
                problems.append("CA %s: %s" % (ca.name, e.reason))
                continue
            if answer.status != 200:
                problems.append("CA %s: GetCACaps answered HTTP %d" % (ca.name, answer.status))
        return problems
