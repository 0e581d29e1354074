"""Diagnostic: where the latency scepproxyd adds to a PKIOperation goes, stage by stage.

Not a benchmark figure (bench/peers.py gives those); this is the profile behind its
"latency added" row. The daemon runs in this process (parse_settings, prepare_state,
make_service, startService on the global reactor, as bench/process_profiles.py does)
with timing wrappers around the stages of ScepProxy's PKIOperation path, patched onto
the classes at run time (the code under test is unchanged):

- ``store.X``: a Store call from the reactor until its Deferred fires (DB-thread hop
  included); ``dbthread.X``: the same call's time on the DB thread (SQL + commit);
- ``upstream.pki_operation``: the treq request to scepserver until its body is read;
- ``codec.*``: the asn1crypto parses of the request and of the CertRep;
- ``proxy.handle``: the whole decision, from the parsed request to the answer.

micromdm scepserver is the upstream CA. A load generator in a child process (so it does
not share this process's GIL) sends ``--requests`` real PKCSReqs one at a time,
alternating direct to scepserver and through the proxy, each with its own one-time
challenge (seeded through the Store API). It prints client-side p50s and, per stage,
the count, p50 and mean in milliseconds.

    .venv/bin/python bench/pkioperation_breakdown.py [--requests 200]
"""

import argparse
import collections
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]

TIMES = collections.defaultdict(list)
LOADGEN = r"""
import json, sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import _peers_load as load
from cryptography import x509
a = json.loads(sys.argv[1])
ca = x509.load_pem_x509_certificate(open(a["ca"], "rb").read())
key, cert = load.device_identity()
direct = [("POST", "/scep?operation=PKIOperation", load.pkcs_req(key, cert, ca, f"d{i}", a["challenge"]))
          for i in range(len(a["paths"]))]
proxied = [("POST", p + "?operation=PKIOperation", load.pkcs_req(key, cert, ca, f"p{i}", a["challenge"]))
           for i, p in enumerate(a["paths"])]
load.drive(a["proxy_port"], [("GET", a["paths"][0] + "?operation=GetCACaps", b"")], 1)
d, p = load.alternate([(a["scep_port"], direct), (a["proxy_port"], proxied)])
print("RESULT " + json.dumps({"direct": [x[2] for x in d if load.enrolled(x[1])],
                              "proxy": [x[2] for x in p if load.enrolled(x[1])]}))
"""


def timed_async(owner, name, label):
    """Replace owner.name with a wrapper timing its call until its Deferred / coroutine fires."""
    from twisted.internet import defer
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        d = result if isinstance(result, defer.Deferred) else defer.ensureDeferred(result)
        return d.addBoth(lambda value: (TIMES[label].append(time.perf_counter() - started), value)[1])

    setattr(owner, name, wrapper)


def timed_sync(owner, name, label):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[label].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def instrument():
    from scepproxyd.scep import codec, proxy, upstream
    from scepproxyd.store import Store
    from scepproxyd.store.database import Database

    for name in ("proxy_target", "consume_challenge", "challenge_settled", "enrollment_forwarded"):
        timed_async(Store, name, "store." + name)
    run = Database._run

    def timed_run(self, fn, write):
        started = time.perf_counter()
        try:
            return run(self, fn, write)
        finally:
            TIMES["dbthread." + fn.__name__].append(time.perf_counter() - started)

    Database._run = timed_run
    timed_async(upstream.UpstreamClient, "pki_operation", "upstream.pki_operation")
    timed_async(proxy.ScepProxy, "handle", "proxy.handle")
    timed_sync(codec, "looks_like_pki_message", "codec.looks_like_pki_message")
    timed_sync(codec, "cert_rep_status", "codec.cert_rep_status")


async def breakdown(reactor, requests):
    from twisted.internet import defer, threads
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from _peers_procs import ScepServer, free_port
    from scepproxyd.config import parse_settings
    from scepproxyd.keys import ChallengeCipher, load_or_create_key
    from scepproxyd.profiles import parse_profile
    from scepproxyd.daemon.lifecycle import StoreService
    from scepproxyd.service import make_service, prepare_state

    top = Path(tempfile.mkdtemp(prefix="scepproxyd-bench-breakdown-"))
    scep = ScepServer(top / "upstream", "bench-static-challenge").start()
    log_file = open(top / "scepproxyd.log", "a")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log_file)], redirectStandardIO=False)
    port, admin_port = free_port(), free_port()
    settings = parse_settings(
        f"[state]\ndirectory = {top / 'var'}\n[server]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"public_url = http://127.0.0.1:{port}\n[admin]\nlisten = tcp:{admin_port}:interface=127.0.0.1\n"
        "[profiles]\nprocess_interval = 1h\n", top / "scepproxyd.ini")
    prepare_state(settings)
    instrument()
    daemon = make_service(settings, reactor)
    await defer.maybeDeferred(daemon.startService)
    try:
        store = next(child.store for child in daemon if isinstance(child, StoreService))
        await store.add_ca("BENCH_CA", scep.url,
                           ChallengeCipher(load_or_create_key(settings.key_file)).encrypt("bench-static-challenge"))
        content = (BENCH.parent / "tests/fixtures/profiles/fleet-custom-scep-apple.mobileconfig").read_bytes()
        content = content.replace(b"CA_NAME", b"BENCH_CA")
        parsed, profile = parse_profile(content), str(uuid.uuid4())
        await store.add_profile(profile, parsed.name, "macos", content, parsed.ca_name, kind=parsed.kind,
                                identifier=parsed.identifier, variables=parsed.variables)
        hosts = [f"BREAKDOWN-{i:05d}" for i in range(requests)]
        await store.import_hosts([(h, "SN" + h, "macos") for h in hosts])
        await store.assign_profile_to_platform(profile, "macos")
        paths = []
        for host in hosts:
            challenge = await store.issue_challenge(host, profile)
            await store.set_host_profile_status(host, profile, "pending")
            paths.append("/mdm/scep/proxy/" + quote(f"{host},{profile},BENCH_CA,{challenge}", safe=""))
        TIMES.clear()
        arg = json.dumps({"ca": str(scep.ca_pem), "paths": paths, "challenge": "bench-static-challenge",
                          "proxy_port": port, "scep_port": scep.port})
        proc = await threads.deferToThread(subprocess.run, [sys.executable, "-c", LOADGEN, arg, str(BENCH),
                                                            str(BENCH.parent)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"load generator failed:\n{proc.stderr[-3000:]}")
            return
        client = json.loads(lines[-1][len("RESULT "):])
        ms = lambda values: 1000 * statistics.median(values)  # noqa: E731
        print(f"client p50: direct {ms(client['direct']):.2f} ms, through scepproxyd {ms(client['proxy']):.2f} ms,"
              f" added {ms(client['proxy']) - ms(client['direct']):.2f} ms ({len(client['proxy'])} enrollments)\n")
        print(f"{'stage (inside scepproxyd)':42} {'count':>6} {'p50 ms':>8} {'mean ms':>8}")
        for label, values in sorted(TIMES.items()):
            print(f"{label:42} {len(values):6d} {ms(values):8.3f} {1000 * statistics.mean(values):8.3f}")
    finally:
        await defer.maybeDeferred(daemon.stopService)
        scep.stop()
        log_file.close()
        shutil.rmtree(top, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    from twisted.internet import defer, task
    task.react(lambda reactor: defer.ensureDeferred(breakdown(reactor, args.requests)))


if __name__ == "__main__":
    main()
