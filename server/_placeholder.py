"""Readable denials: a ``json/plain`` payload in place of one the caller may not read.

The Web UI renders a ``json/plain`` payload as JSON and anything else as a
base64 string, which a person cannot tell from corrupt data. A placeholder
says, in the UI's own rendering, that a payload is withheld, why, and what
would allow it::

    {"temporal-shield": "withheld",
     "reason": "classification pci not permitted",
     "namespace": "prod-payments",
     "classification": "pci",
     "how to get access": ["Ask for one of these roles: finance"]}

It names only what the caller could already see (the namespace they asked
for, the classification label that travels in clear in the envelope header)
and what the policy would accept; never a key id, a size, another
namespace's name or any decrypted byte.

A placeholder is marked in its metadata (:data:`PLACEHOLDER_METADATA`) so that
it can never be mistaken for data: ``/encode`` refuses it (see
:func:`is_placeholder`), or a UI that sends a displayed payload back (a
signal, "start a workflow like this one") would store the notice in place of
the real value.
"""

from __future__ import annotations

import json
import re
import shlex
import urllib.parse
from collections.abc import Sequence

from temporal_shield.converter import PayloadLike

from ._identity import Identity
from ._policy import Policy, StepUpRule
from ._wire import WirePayload

PLACEHOLDER_METADATA = "temporal-shield-placeholder"
"""Metadata key that marks a placeholder (value ``b"withheld"``)."""
PLACEHOLDER_VALUE = b"withheld"
PLACEHOLDER_TAG = "temporal-shield"
"""The JSON key every placeholder starts with (value ``"withheld"``)."""
PLACEHOLDER_TEXT_LIMIT = 512
"""Longest text field a placeholder carries (a namespace comes from a request header)."""
PLACEHOLDER_REMEDY_LIMIT = 8
"""Most remedies a placeholder lists."""
_WITHHELD = tuple(
    "withheld".encode(codec)
    for codec in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)
"""A notice's marker value as JSON may spell it."""
_MAX_VALUES = 64
"""Most top-level JSON values read from one payload (``notice notice ...``)."""
_PARSE_LIMIT = 64 * 1024
"""Largest data :func:`is_placeholder` parses as JSON (every object looked at by
Python: ~1 s for 4 MiB of ``{}``); above it, a linear regular-expression search
for the notice's marker member is the bound on what a hostile ``/encode`` costs."""
_MARKER_MEMBER = re.compile(r'"temporal-shield"\s*:\s*"withheld"')
"""The marker member as JSON writers spell it (no escapes), for large documents."""
_ENCODING = b"json/plain"
STEP_UP_REASON = "step-up required: "
"""How the reason for a payload that needs a stronger sign-in starts."""


def placeholder(
    *,
    namespace: str,
    reason: str,
    classification: str | None,
    remedies: Sequence[str],
) -> WirePayload:
    """A readable stand-in for a payload the caller may not read.

    Args:
        namespace: The namespace the caller asked about (empty: left out).
        reason: Why the payload is withheld, e.g. ``"step-up required: amr mfa"``.
        classification: The payload's classification label (``None``: left out,
            e.g. for a payload bound to another namespace).
        remedies: What would allow it, one sentence each (roles, a sign-in URL,
            the grant request command); at most :data:`PLACEHOLDER_REMEDY_LIMIT`.

    Returns:
        A ``json/plain`` payload marked with :data:`PLACEHOLDER_METADATA`.
    """
    doc: dict[str, object] = {PLACEHOLDER_TAG: "withheld", "reason": _cut(reason)}
    if namespace:
        doc["namespace"] = _cut(namespace)
    if classification is not None:
        doc["classification"] = _cut(classification or "unclassified")
    doc["how to get access"] = [_cut(r) for r in remedies[:PLACEHOLDER_REMEDY_LIMIT]]
    # ASCII-only JSON: a namespace header's undecodable bytes arrive as lone
    # surrogates, which must become escapes rather than invalid UTF-8.
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
    return WirePayload({"encoding": _ENCODING, PLACEHOLDER_METADATA: PLACEHOLDER_VALUE}, data)


def placeholder_in(payloads: Sequence[PayloadLike]) -> bool:
    """Whether any of ``payloads`` is a placeholder (see :func:`is_placeholder`).

    At most ``_PARSE_LIMIT`` bytes of one request are parsed, whatever the
    number of payloads; the rest is searched: many payloads each just under
    the limit would otherwise cost a second of parsing per request.
    """
    budget = _PARSE_LIMIT
    for payload in payloads:
        size = len(payload.data)
        parse = size <= budget
        if is_placeholder(payload, parse=parse):
            return True
        if parse:
            budget -= size
    return False


def is_placeholder(payload: PayloadLike, *, parse: bool = True) -> bool:
    """Whether ``payload`` is (or was) a placeholder and must never be encoded.

    Recognised by its marker, whatever the key's case (metadata keys are exact
    protobuf map keys, but a look-alike key has no business on a payload to
    encode either), and by its content: a UI that displays a placeholder and
    sends the text back (``json/plain``, marker gone) sends a JSON object whose
    ``"temporal-shield"`` member is ``"withheld"``.
    """
    metadata = payload.metadata
    if PLACEHOLDER_METADATA in metadata:
        return True
    for key in metadata:
        if key.strip().lower() == PLACEHOLDER_METADATA:
            return True
    return _marked(payload.data, parse=parse)


def _marked(data: bytes, *, parse: bool = True) -> bool:
    """Whether ``data`` holds a notice anywhere: nested, among other values, or repeated.

    A UI's input field holds a workflow's arguments as one JSON array, and a
    person may paste a notice inside an object or next to a large argument, so
    a document of up to ``_PARSE_LIMIT`` bytes is parsed whole: every object at
    every depth is looked at (duplicate keys and escaped spellings included),
    and values after the first (``notice x``, two notices) are read too. A
    larger one (or any once a request's parse budget is spent) is searched for
    the marker member as JSON writers spell it, if it is a JSON array or object.
    Only documents that spell "withheld" are looked at: a notice always does,
    in UTF-8 or in the UTF-16/32 that JSON may also be written in.
    """
    if not data or not any(form in data for form in _WITHHELD):
        return False
    try:
        text = data.decode(json.detect_encoding(data)).lstrip("\ufeff")
    except (UnicodeDecodeError, LookupError):
        return False
    if len(data) > _PARSE_LIMIT or not parse:
        # A notice pasted among large arguments keeps its plain spelling; a
        # search costs milliseconds where parsing a hostile document costs seconds.
        # Only in a JSON array or object, as parsing would find it (a document
        # that merely quotes a notice is not one, at any size).
        return text.lstrip()[:1] in ("[", "{") and _MARKER_MEMBER.search(text) is not None
    found = False

    def look(pairs: list[tuple[str, object]]) -> dict[str, object]:
        nonlocal found
        found = found or any(k == PLACEHOLDER_TAG and v == "withheld" for k, v in pairs)
        return {}  # the values themselves are not needed

    decoder = json.JSONDecoder(object_pairs_hook=look)
    at = 0
    for _ in range(_MAX_VALUES):
        at = len(text) - len(text[at:].lstrip())
        if at >= len(text) or found:
            break
        try:
            _, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            break
    return found


def _cut(text: str) -> str:
    if len(text) <= PLACEHOLDER_TEXT_LIMIT:
        return text
    return text[:PLACEHOLDER_TEXT_LIMIT] + "...[truncated]"


GRANT_COMMAND = (
    "temporal-shield grants request{server} --namespace {namespace}"
    ' --classification {classification} --duration 1h --justification "<ticket>"'
)
"""The grant request a placeholder suggests (see ``docs/grants.md``)."""


class Notices:
    """The placeholders of one decode request, each built once.

    What a notice offers depends only on the request (identity, namespace,
    sign-in URL) and the payload's classification, so a request of many
    denied payloads builds each distinct notice once and repeats it.
    """

    def __init__(
        self,
        policy: Policy | None,
        identity: Identity,
        namespace: str,
        sign_in_url: str,
        server_url: str = "",
    ) -> None:
        """Notices for ``identity``'s request in ``namespace`` (``""``: unknown).

        ``server_url`` (this server's public URL, if configured) goes into the
        grant command a notice offers, so that it runs as shown with a token.
        """
        self._policy = policy
        self._identity = identity
        self._namespace = namespace
        self._sign_in_url = sign_in_url
        self._server_url = server_url
        self._built: dict[tuple[str, str | None], WirePayload] = {}

    def namespace(self, reason: str) -> WirePayload:
        """For a payload bound to another namespace, or a request that names none.

        Says neither the other namespace nor the classification: nothing about
        a payload of another namespace is this request's business.
        """
        key = (reason, None)
        notice = self._built.get(key)
        if notice is None:
            if self._namespace:
                text = f"{reason}: the payload belongs to another namespace"
                remedies = ["Open it from the namespace its workflow runs in."]
            else:
                text = f"{reason}: the request names no namespace"
                remedies = [
                    "Send the namespace: the X-Namespace header,"
                    " or a codec endpoint ending in /{namespace}."
                ]
            notice = self._built[key] = placeholder(
                namespace=self._namespace, reason=text, classification=None, remedies=remedies
            )
        return notice

    def denied(self, reason: str, classification: str) -> WirePayload:
        """For a payload the policy denies, or that needs a stronger sign-in.

        Offers the roles that would allow it, a grant request where grants
        may be requested, and the stronger sign-in the step-up rules ask for.
        """
        key = (reason, classification)
        notice = self._built.get(key)
        if notice is None:
            policy = self._policy
            rules = policy.step_up_rules(self._namespace, classification) if policy else ()
            notice = self._built[key] = placeholder(
                namespace=self._namespace,
                reason=reason,
                classification=classification,
                remedies=self._remedies(reason, classification, rules),
            )
        return notice

    def _remedies(self, reason: str, classification: str, rules: Sequence[StepUpRule]) -> list[str]:
        policy, namespace = self._policy, self._namespace
        remedies = []
        step_up_only = reason.startswith(STEP_UP_REASON)
        if policy is not None and not step_up_only:
            roles = policy.roles_allowing(namespace, "decode", classification)
            if roles:
                remedies.append(f"Ask for one of these roles: {', '.join(roles)}.")
            grants = policy.grants
            if (
                grants is not None
                and grants.requestable(namespace, classification)
                and grants.may_request(self._identity)
            ):
                remedies.append(
                    "Request temporary access: "
                    + GRANT_COMMAND.format(
                        server=f" --server {shlex.quote(self._server_url)}"
                        if self._server_url
                        else "",
                        namespace=shlex.quote(namespace),
                        classification=shlex.quote(classification),
                    )
                )
        if rules:
            remedies.append(self._step_up(rules, also=not step_up_only))
        if not remedies:
            remedies.append("Ask the codec server's administrators (its RBAC policy).")
        return remedies

    def _step_up(self, rules: Sequence[StepUpRule], *, also: bool) -> str:
        """The stronger sign-in that satisfies every one of ``rules``."""
        needs = "; ".join(dict.fromkeys(need for rule in rules for need in rule.requirements()))
        lead = "Reading it also requires" if also else "Sign in again with"
        if not self._sign_in_url:
            return f"{lead} a stronger sign-in at your identity provider ({needs})."
        query = {}
        acr = _common_acr(rules)
        if acr:
            query["acr_values"] = " ".join(acr)
        ages = [rule.max_age for rule in rules if rule.max_age is not None]
        if ages:
            query["max_age"] = f"{int(min(ages))}"
        url = self._sign_in_url
        if query:
            joiner = "&" if "?" in url else "?"
            url += joiner + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
        return f"{lead} a stronger sign-in ({needs}): {url}"


def _common_acr(rules: Sequence[StepUpRule]) -> tuple[str, ...]:
    """``acr`` values every rule accepts (in the first rule's order of preference)."""
    wanted = [rule.acr for rule in rules if rule.acr]
    if not wanted:
        return ()
    common = tuple(value for value in wanted[0] if all(value in acr for acr in wanted[1:]))
    return common or wanted[0]
