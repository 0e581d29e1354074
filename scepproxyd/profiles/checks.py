"""Variable rules shared by Apple profiles, Android templates and Windows SyncML profiles.

Each kind places variables in a differently shaped document, but "each
variable at most once" and "challenge and URL name the same CA" mean the same
thing in all; this module says them once, with one message each.
"""

import re
from collections import Counter
from collections.abc import Hashable, Iterable

import attrs

from scepproxyd.profiles import variables
from scepproxyd.profiles.model import ProfileError

#: Subject attribute types the renewal ID may be written in (the daemon finds it there in the certificate).
RENEWAL_ID_TYPES = {"CN", "2.5.4.3", "OU", "2.5.4.11"}
#: What an XML document's text holds that its parser does not show as text.
_XML_HIDDEN = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>", re.DOTALL)


@attrs.frozen
class Occurrence:
    """A variable found at ``location`` (a format-specific path) in a document."""

    variable: variables.Variable
    location: Hashable
    whole: bool  # the variable is the entire string value at ``location``
    in_key: bool = False  # written in a dictionary key (or a subject's attribute type), not a value


def occurrences_in(
    text: str, location: Hashable, is_value: bool = True, in_key: bool | None = None
) -> list[Occurrence]:
    """The variables in ``text``; in a key (``is_value`` false) none is ever whole.

    ``in_key`` defaults to ``not is_value``; a part of a value (an RDN of a
    DN string) is not whole and not a key either.
    """
    key = not is_value if in_key is None else in_key
    return [Occurrence(f.variable, location, f.whole and is_value, key) for f in variables.find(text)]


def refuse_repeats(occurrences: Iterable[Occurrence]) -> None:
    """Each custom-SCEP variable at most once; the two renewal ID spellings count as one.

    A second copy of a challenge would put the CA's static challenge somewhere
    the rules never looked at; a second renewal ID would make it ambiguous
    where the daemon should find it in the issued certificate. Host variables
    and secrets may repeat (a username in the subject and in a Wi-Fi UserName).
    """
    written: dict[str, list[str]] = {}
    for occurrence in occurrences:
        variable = occurrence.variable
        if variable.kind not in variables.SCEP_KINDS:
            continue
        group = variables.RENEWAL if variable.kind == variables.RENEWAL else variable.name
        written.setdefault(group, []).append(variable.name)
    for names in written.values():
        if len(names) < 2:
            continue
        if len(set(names)) > 1:
            first, second = sorted(set(names), key=names.index)
            raise ProfileError(
                "variables $%s and $%s are the same variable; use one of them, once"
                % (first, second)
            )
        raise ProfileError(
            "variable $%s appears %d times; each may appear at most once" % (names[0], len(names))
        )


def same_ca(
    challenge: variables.Variable,
    url: variables.Variable,
    challenge_label: str,
    url_label: str,
) -> str:
    """The one CA both variables name; refused when they disagree."""
    if challenge.ca_name != url.ca_name:
        raise ProfileError(
            "%s names CA '%s' but %s names CA '%s'"
            % (challenge_label, challenge.ca_name, url_label, url.ca_name),
            url_label,
        )
    assert challenge.ca_name is not None
    return challenge.ca_name


def whole_variable_at(
    occurrences: Iterable[Occurrence], location: Hashable, kind: str
) -> variables.Variable | None:
    """The variable of ``kind`` that is exactly the value at ``location``, if any."""
    for occurrence in occurrences:
        if (
            occurrence.location == location
            and occurrence.whole
            and occurrence.variable.kind == kind
        ):
            return occurrence.variable
    return None


def refuse_strays(
    occurrences: Iterable[Occurrence],
    challenge_at: tuple[Hashable, str],
    url_at: tuple[Hashable, str],
) -> None:
    """Challenge and URL variables nowhere but their own field.

    Runs after the fields themselves were checked, so any other challenge or
    URL variable names a second CA, which the renderer could not fill in.
    ``challenge_at`` and ``url_at`` are (location, label for messages).
    """
    expected = {variables.CHALLENGE: challenge_at, variables.PROXY_URL: url_at}
    for occurrence in occurrences:
        place = expected.get(occurrence.variable.kind)
        if place is not None and occurrence.location != place[0]:
            raise ProfileError(
                "variable %s may only be the whole value of %s"
                % (occurrence.variable.spelled, place[1])
            )


def refuse_windows_only(occurrences: Iterable[Occurrence], kind_label: str) -> None:
    """The Windows certificate ID names a ClientCertificateInstall node: it means nothing elsewhere."""
    for occurrence in occurrences:
        if occurrence.variable.kind == variables.WINDOWS_ID:
            raise ProfileError(
                "variable %s is only for Windows SyncML profiles (in a ClientCertificateInstall/SCEP"
                " <LocURI>), not in %s" % (occurrence.variable.spelled, kind_label)
            )


def names(occurrences: Iterable[Occurrence]) -> tuple[str, ...]:
    """The variable names written in a document, sorted, each once."""
    return tuple(sorted(Counter(o.variable.name for o in occurrences)))


def refuse_in_keys(occurrences: Iterable[Occurrence]) -> None:
    """Host variables and secrets only in string values, never in a key (the custom-SCEP ones have their own rules)."""
    for occurrence in occurrences:
        if occurrence.variable.kind not in variables.SCEP_KINDS and occurrence.in_key:
            raise ProfileError(
                "variable %s is in a dictionary key; variables may only be written in string values"
                % (occurrence.variable.spelled,)
            )


def missing_secret(name: str) -> str:
    """The refusal of a profile naming a custom secret that does not exist (Fleet's wording, plus the fix)."""
    return (
        'secret variable "$%s%s" missing from database; add it first (scepproxyctl secret set %s)'
        % (variables.SECRET_PREFIX, name, name)
    )


def secret_in_certificate(variable: variables.Variable, where: str) -> ProfileError:
    """A secret where the certificate (and so anyone who sees it) would carry it."""
    return ProfileError(
        "secret variable %s cannot appear in %s: it describes a certificate, whose subject and names anyone"
        " shown the certificate can read; a secret belongs only where the device keeps it (a Wi-Fi or VPN"
        " password, say)" % (variable.spelled, where)
    )


def refuse_hidden(text: str, in_text: list[variables.Found], parsed: Iterable[Occurrence], place: str) -> None:
    """
    Refuse variables that an XML document's text and its parsed form do not both see plainly.

    A variable in a comment or CDATA section, or spelled with character
    references, would be rendered where the checks never looked (or not at
    all). ``in_text`` is L{variables.find} of ``text``; ``place`` says where
    variables belong, for the message.
    """
    message = "variable %s must be written as plain text in " + place + ", not in a comment, CDATA section" \
        " or character reference"
    for hidden in _XML_HIDDEN.finditer(text):
        for found in in_text:
            if hidden.start() <= found.start < hidden.end():
                raise ProfileError(message % (found.variable.spelled,))
    seen_in_text = Counter(f.variable.name for f in in_text)
    seen_parsed = Counter(o.variable.name for o in parsed)
    for name in sorted(seen_in_text.keys() | seen_parsed.keys()):
        if seen_in_text[name] != seen_parsed[name]:
            raise ProfileError(message % ("$" + name,))
