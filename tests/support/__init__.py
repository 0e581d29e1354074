"""The one test harness: what several test modules (and bench/) need, written once.

Fixtures that wrap these live in ``tests/conftest.py``; test modules import
helpers from here, never from another test module. Modules are named by what
they hold: processes (need, free_port, wait_for_port, stop by pid), daemon
(twistd and its config), upstream (scepserver), api (the one API client), ctl
(scepproxyctl), clients (scepclient, strongSwan pki, openssl), certmonger, site
(a site set up through the APIs), ra_site (one with an upstream CA in RA mode), admin_site (the admin API in the test's
reactor), builtin_ca, certs, hostile, scep_capture, nanomdm_fake, state, store.
"""
