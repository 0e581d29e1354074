"""Where a host profile stands, in the five words Fleet shows for Android certificate templates.

Derived from what the store already keeps (the host profile's status and its
current command's), so no state is kept twice and no migration is needed:

- ``pending``: waiting to be handed over (status NULL, or claimed with its
  command still queued for the agent to fetch);
- ``delivering``: handed over (the agent fetched it, or a push backend sent
  it) and nothing heard since; ``[delivery] stuck_after`` later it is sent
  again with a fresh challenge;
- ``delivered``: the device acknowledged it, or enrolled through the proxy,
  and its certificate is not confirmed yet (status ``verifying``);
- ``verified``: a certificate was issued for it or reported installed;
- ``failed``: it gave up after ``[profiles] max_retries`` (``detail`` says why).
"""

LIFECYCLE = ("pending", "delivering", "delivered", "verified", "failed")


def lifecycle(status: str | None, command_status: str | None) -> str:
    """The lifecycle word for a host profile's ``status`` and its current command's status."""
    if status in ("verified", "failed"):
        return status
    if status == "verifying":
        return "delivered"
    if status == "pending" and command_status == "delivered":
        return "delivering"
    return "pending"
