"""The platforms a host can be, and which of them are Apple's.

One list serves the store's checks, the admin API's refusals (whose messages
list the choices) and the choice of delivery backend, so a platform is added
in one place and every message stays in step with what is accepted.
"""

#: Platforms a .mobileconfig is for; push delivery backends serve only these.
APPLE_PLATFORMS = ("macos", "ios", "ipados")
#: Every platform a host can be, in the order messages list them.
PLATFORMS = APPLE_PLATFORMS + ("android", "windows")
