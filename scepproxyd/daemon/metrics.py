"""Prometheus metrics: what operators graph and alert on.

One registry per daemon (not prometheus_client's global one), so tests and
several services in one process never mix their figures. Counting happens
where things happen (proxy, renderer, jobs); the host-profile gauge is read
from the store when /metrics is scraped, on the DB thread.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST.encode("ascii")

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._proxied = {}  # (operation, outcome) -> the counter's labelled child
        self.proxy_requests = Counter(
            "scepproxyd_proxy_requests", "Proxied SCEP requests by operation and outcome.",
            ["operation", "outcome"], registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "scepproxyd_upstream_latency_seconds", "Time to an upstream CA's complete answer.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.challenges = Counter(
            "scepproxyd_challenges",
            "One-time challenges by event (minted, consumed, restored, expired: removed by the cleanup job,"
            " expired_resent: a host profile's latest expired unused and it was sent again without a retry).",
            ["event"], registry=self.registry,
        )
        self.job_duration = Histogram(
            "scepproxyd_job_duration_seconds", "Duration of job runs.",
            ["job"], buckets=LATENCY_BUCKETS + (60.0, 300.0), registry=self.registry,
        )
        self.job_runs = Counter(
            "scepproxyd_job_runs", "Job runs by outcome.", ["job", "outcome"], registry=self.registry,
        )
        self.job_items = Counter(
            "scepproxyd_job_items", "What job runs did, by count name.", ["job", "item"], registry=self.registry,
        )
        self.host_profiles = Gauge(
            "scepproxyd_host_profiles", "Host profiles by status (null = waiting to be sent).",
            ["status"], registry=self.registry,
        )
        self.ca_operations = Counter(
            "scepproxyd_ca_operations", "Built-in CA operations by message type and outcome.",
            ["operation", "outcome"], registry=self.registry,
        )
        self.open_connections = Gauge(
            "scepproxyd_open_connections", "Open connections by listener (proxy, admin).",
            ["listener"], registry=self.registry,
        )
        self.connections_refused = Counter(
            "scepproxyd_connections_refused",
            "Connections closed at accept because the listener was at its max_connections cap.",
            ["listener"], registry=self.registry,
        )
        self.renewals_deferred = Gauge(
            "scepproxyd_renewals_deferred",
            "Host profiles due for renewal that pacing holds back, by CA, as of this node's last renewal run.",
            ["ca"], registry=self.registry,
        )
        self.renewals_at_risk = Gauge(
            "scepproxyd_renewals_at_risk",
            "Of those held back, how many the CA's pace would start only after their certificate expires, by CA.",
            ["ca"], registry=self.registry,
        )
        self._renewal_cas = set()  # every CA the two gauges above were given, so one that drains shows 0
        self.stuck_deliveries_resent = Counter(
            "scepproxyd_stuck_deliveries_resent",
            "Host profiles handed over (fetched by the agent) and never reported on within [delivery] stuck_after,"
            " sent again with a fresh challenge by the cleanup job.",
            registry=self.registry,
        )
        self.ca_refusals = Counter(
            "scepproxyd_ca_policy_refusals", "Built-in CA requests refused by the issuance policy, by check.",
            ["check"], registry=self.registry,
        )

    def connection_opened(self, listener: str) -> None:
        self.open_connections.labels(listener).inc()

    def connection_closed(self, listener: str) -> None:
        self.open_connections.labels(listener).dec()

    def connection_refused(self, listener: str) -> None:
        self.connections_refused.labels(listener).inc()

    def proxied(self, operation: str | None, outcome: str) -> None:
        key = (operation or "-", outcome)
        child = self._proxied.get(key)
        if child is None:  # a handful of pairs: the labelled child is looked up once per pair, not per request
            child = self._proxied[key] = self.proxy_requests.labels(*key)
        child.inc()

    def upstream_answered(self, operation: str, seconds: float) -> None:
        self.upstream_latency.labels(operation).observe(seconds)

    def ca_operation(self, operation: str, outcome: str) -> None:
        self.ca_operations.labels(operation, outcome).inc()

    def ca_refused(self, check: str) -> None:
        self.ca_refusals.labels(check).inc()

    def challenge(self, event: str, count: int = 1) -> None:
        if count:
            self.challenges.labels(event).inc(count)

    def job_finished(self, job: str, seconds: float, result: dict | None) -> None:
        self.job_duration.labels(job).observe(seconds)
        self.job_runs.labels(job, "ok" if result is not None else "failed").inc()
        for item, count in (result or {}).items():
            if isinstance(count, int) and count:
                self.job_items.labels(job, item).inc(count)
        if result and result.get("expired_challenges_removed"):
            self.challenge("expired", result["expired_challenges_removed"])
        if result and result.get("expired_profiles_resent"):
            self.challenge("expired_resent", result["expired_profiles_resent"])
        if result and result.get("stuck_deliveries_resent"):
            self.stuck_deliveries_resent.inc(result["stuck_deliveries_resent"])

    def set_host_profile_counts(self, counts: dict) -> None:
        for status, count in counts.items():
            self.host_profiles.labels(status or "null").set(count)

    def set_renewal_queue(self, deferred: dict, at_risk: dict, cas=()) -> None:
        """
        The renewal job's view after a paced run: ``{ca: count}`` held back, and at risk of expiring.

        ``cas`` names CAs to show even with nothing held back (those with
        renewals due); a CA shown once keeps its series, at 0 when drained.
        """
        self._renewal_cas.update(cas, deferred, at_risk)
        for ca in self._renewal_cas:
            self.renewals_deferred.labels(ca).set(deferred.get(ca, 0))
            self.renewals_at_risk.labels(ca).set(at_risk.get(ca, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

