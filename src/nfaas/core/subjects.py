"""NATS subjects and MQTT topic filters: validation and the mapping between them.

The bus is NATS; MQTT devices reach it through nats-server's MQTT listener, which maps a topic
``a/b/c`` to the subject ``a.b.c``, ``+`` to ``*`` and ``#`` to ``>``. A trigger on an MQTT
topic filter is therefore a consumer on the NATS subjects it maps to.
"""

from __future__ import annotations

import re

# What the platform keeps for itself: async calls, dead letters, callbacks; and the server's.
RESERVED_PREFIXES = ("nfaas.", "$", "_INBOX.")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-:@~=+%]+$")


class SubjectError(ValueError):
    """A subject or topic filter breaks a rule; the message names the rule and the place."""


def validate_subject(subject: str, wildcards: bool = True) -> str:
    """A NATS subject: dot-separated non-empty tokens of letters, digits and ``_-:@~=+%``;
    ``*`` matches one whole token, ``>`` the rest (last token only)."""
    if not isinstance(subject, str) or not subject:
        raise SubjectError("a subject must be a non-empty string")
    for prefix in RESERVED_PREFIXES:
        if subject.startswith(prefix) or subject == prefix.rstrip("."):
            raise SubjectError(f"subject {subject!r}: {prefix!r} subjects are reserved")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        where = f"subject {subject!r}, token {index + 1}"
        if token == "":
            raise SubjectError(f"{where} is empty (no leading, trailing or double dots)")
        if token in ("*", ">"):
            if not wildcards:
                raise SubjectError(f"{where}: wildcard {token!r} is not allowed here")
            if token == ">" and index != len(tokens) - 1:
                raise SubjectError(f"{where}: '>' may only be the last token")
            continue
        if not _TOKEN.match(token):
            raise SubjectError(
                f"{where} ({token!r}): use letters, digits and _-:@~=+% "
                "('*' and '>' only as whole tokens)"
            )
    return subject


def mqtt_filter_to_subjects(topic_filter: str) -> list[str]:
    """The NATS subjects an MQTT topic filter covers (as nats-server's listener maps them).

    ``a/#`` also matches ``a`` itself in MQTT, so it maps to ``a`` and ``a.>``.
    """
    if not isinstance(topic_filter, str) or not topic_filter:
        raise SubjectError("an MQTT topic filter must be a non-empty string")
    levels = topic_filter.split("/")
    tokens: list[str] = []
    for index, level in enumerate(levels):
        where = f"MQTT topic {topic_filter!r}, level {index + 1}"
        if level == "":
            raise SubjectError(f"{where} is empty (no leading, trailing or double '/')")
        if level == "#":
            if index != len(levels) - 1:
                raise SubjectError(f"{where}: '#' may only be the last level")
            tokens.append(">")
        elif level == "+":
            tokens.append("*")
        elif "+" in level or "#" in level:
            raise SubjectError(f"{where} ({level!r}): '+' and '#' must be whole levels")
        elif "." in level or " " in level:
            raise SubjectError(f"{where} ({level!r}): '.' and spaces cannot cross into NATS")
        else:
            tokens.append(level)
    subject = ".".join(tokens)
    try:
        validate_subject(subject)
    except SubjectError as exc:
        raise SubjectError(f"MQTT topic {topic_filter!r} maps to {exc}") from None
    if tokens[-1] == ">" and len(tokens) > 1:
        return [".".join(tokens[:-1]), subject]
    return [subject]


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a literal ``subject`` is in ``pattern`` (which may hold wildcards)."""
    want, have = pattern.split("."), subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(have) == len(want)


def subjects_overlap(a: str, b: str) -> bool:
    """Whether some literal subject is in both patterns."""
    ta, tb = a.split("."), b.split(".")
    for index in range(max(len(ta), len(tb))):
        x = ta[index] if index < len(ta) else None
        y = tb[index] if index < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


def subject_covers(wide: str, narrow: str) -> bool:
    """Whether every subject in ``narrow`` is also in ``wide``."""
    tw, tn = wide.split("."), narrow.split(".")
    for index, token in enumerate(tw):
        if token == ">":
            return len(tn) > index
        if index >= len(tn):
            return False
        if token == "*":
            if tn[index] == ">":
                return False
            continue
        if token != tn[index]:
            return False
    return len(tn) == len(tw)
