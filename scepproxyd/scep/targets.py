"""
A short-lived cache of proxy targets, so GetCACaps and GetCACert need no database.

Devices ask for the CA's capabilities and certificate far more often than
they enroll; each such request used to cost a ``proxy_target`` query. This
cache keeps the answer (a ProxyTarget, or None for an unknown identifier)
for ``seconds``:

- on this node, every store write that can change an answer (a CA, profile,
  host or assignment added, changed or removed) bumps the store's
  ``targets_generation``, and the cache drops everything it holds when it
  sees the number move, so an admin change counts from the next request;
- other nodes sharing a PostgreSQL database are not told: their changes show
  here within ``seconds``.

Only the CA-facing fields (CA name, URL, mode) of a cached target are sound:
the host profile's status and certificate serial change with every
enrollment and do not invalidate it. PKIOperation therefore reads its target
from the store, never from here.
"""

from collections import OrderedDict

#: Enough for every host profile of a large fleet asking at once; one entry is a few hundred bytes.
DEFAULT_MAX_ENTRIES = 10000


class TargetCache:
    """``proxy_target`` answers, kept for ``seconds`` (0: always ask the store), at most ``max_entries`` of them."""

    def __init__(self, store, clock, seconds: float, max_entries: int = DEFAULT_MAX_ENTRIES):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        self._store = store
        self._clock = clock
        self._seconds = seconds
        self._max_entries = max_entries
        self._generation = store.targets_generation
        #: (host_uuid, profile_uuid, ca_name) -> (expires_at, ProxyTarget or None), least recently used first.
        self._entries: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def in_memory(self, host_uuid, profile_uuid, ca_name) -> tuple:
        """``(True, ProxyTarget or None)`` when a fresh answer is held, else ``(False, None)``: no I/O, no Deferred."""
        if self._seconds <= 0:
            return False, None
        generation = self._store.targets_generation
        if generation != self._generation:
            self._entries.clear()
            self._generation = generation
        key = (host_uuid, profile_uuid, ca_name)
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock.seconds():
                self._entries.move_to_end(key)
                return True, entry[1]
            del self._entries[key]
        return False, None

    async def ca_target(self, host_uuid, profile_uuid, ca_name):
        """The identifier's ProxyTarget (for its CA fields only) or None, from memory when fresh enough."""
        held, target = self.in_memory(host_uuid, profile_uuid, ca_name)
        if held:
            return target
        if self._seconds <= 0:
            return await self._store.proxy_target(host_uuid, profile_uuid, ca_name)
        generation, now = self._generation, self._clock.seconds()
        key = (host_uuid, profile_uuid, ca_name)
        target = await self._store.proxy_target(host_uuid, profile_uuid, ca_name)
        # A write that ended while this query ran may have come after it: keep nothing then.
        if self._store.targets_generation == generation == self._generation:
            self._entries[key] = (now + self._seconds, target)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return target
