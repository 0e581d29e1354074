"""
Renewal pacing through the documented interfaces, in process: ``[renewal]`` limits in the INI,
``POST /api/v1/jobs/renew_certificates`` reporting what it deferred, ``/metrics`` showing the queue,
and the host profiles' status and detail in the admin API.
"""

import pytest_twisted

from support.store import certified_fleet
from support.web import build_web, stop_web

HOUR, DAY = 3600.0, 86400.0
RENEW = "/api/v1/jobs/renew_certificates"


@pytest_twisted.ensureDeferred
async def test_a_limited_ca_defers_the_rest_and_the_queue_shows(store, clock, db_path, tmp_path):
    clock.advance(HOUR - clock.seconds() % HOUR)  # a window's start
    now = clock.seconds()
    web = await build_web(store, clock, tmp_path, database=db_path,
                          renewal={"limit": "none", "ca_limits": "ndes:30", "limit_interval": "1h"})
    try:
        await certified_fleet(store, "ndes", "wifi", ["n%02d" % i for i in range(12)],
                              [now + (i + 1) * DAY for i in range(12)])
        await certified_fleet(store, "acme", "vpn", ["a1", "a2"], [now + DAY] * 2)
        answer = await web.ok(web.admin("POST", RENEW))
        # ndes: 30 an hour, 3 at once (the job wakes every [profiles] process_interval, 30 s, worth less).
        assert answer == {"job": "renew_certificates",
                          "result": {"renewals_due": 3 + 2, "renewals_deferred": {"ndes": 9}}}
        assert await web.metric("scepproxyd_renewals_deferred", ca="ndes") == 9
        assert await web.metric("scepproxyd_renewals_deferred", ca="acme") == 0
        assert await web.metric("scepproxyd_renewals_at_risk", ca="ndes") == 0
        assert await web.metric("scepproxyd_job_runs_total", job="renew_certificates", outcome="ok") == 1
        started = await web.host_profile("n00", "wifi")
        assert (started["status"], started["detail"]) == (None, "renewing: certificate expires %s"
                                                          % (started["cert_not_after"],))
        assert (await web.host_profile("n03", "wifi"))["status"] == "verified"

        # A trigger 4 minutes on starts what opened meanwhile: one per 2 minutes, soonest expiry first.
        clock.advance(240)
        answer = await web.ok(web.admin("POST", RENEW))
        assert answer["result"] == {"renewals_due": 2, "renewals_deferred": {"ndes": 7}}
        assert await web.metric("scepproxyd_renewals_deferred", ca="ndes") == 7
        assert (await web.host_profile("n04", "wifi"))["status"] is None
        assert (await web.host_profile("n05", "wifi"))["status"] == "verified"
    finally:
        await stop_web(web)
