"""The daemon's plumbing: ordered start and stop, systemd notification and journal, reload, metrics, logs, TLS, connection caps.

Nothing here knows SCEP or the store's tables; domain modules import only
``daemon.logs`` (and ``daemon.tls`` for trust bundles). Kept free of
imports so that importing one module never pulls in the others.
"""
