"""Certificate profiles: Apple .mobileconfig, Android certificate templates, Windows SyncML.

Parse and validate at upload (L{parse_profile}), render per host at delivery
(L{render_profile}). Variable names live in L{scepproxyd.profiles.variables}
only; docs/profiles.md is the admin's guide to the rules and messages.
"""

from scepproxyd.profiles.model import (
    ANDROID_TEMPLATE,
    MOBILECONFIG,
    ParsedProfile,
    ProfileError,
    WINDOWS_SYNCML,
)
from scepproxyd.profiles.parse import parse_profile
from scepproxyd.profiles.render import proxy_url, render_profile

__all__ = [
    "ANDROID_TEMPLATE",
    "MOBILECONFIG",
    "ParsedProfile",
    "ProfileError",
    "WINDOWS_SYNCML",
    "parse_profile",
    "proxy_url",
    "render_profile",
]
