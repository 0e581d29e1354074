"""What the profile tests share: the check that an upload is refused with exactly one documented message."""

import pytest

from scepproxyd.profiles import ProfileError, parse_profile


def refused(content: bytes, message: str, field: str | None = "profile") -> None:
    """``content`` is refused at upload with ``message`` (docs/profiles.md's words) pointing at ``field``.

    ``field`` None: the place is not part of what the test asserts.
    """
    with pytest.raises(ProfileError) as e:
        parse_profile(content)
    assert str(e.value) == message
    if field is not None:
        assert e.value.field == field
