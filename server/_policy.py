"""RBAC: who may decode or encode which namespaces and data classifications.

A policy file (YAML or TOML) has three parts::

    roles:                      # what a role may do
      engineer:
        namespaces: ["dev-*", "staging-*"]   # glob patterns
        operations: [decode]                 # decode, encode
        classifications: ["internal", "unclassified"]
      finance:
        namespaces: ["*"]
        operations: [decode]
        classifications: ["pci"]
    bindings:                   # who has a role (any listed subject/email/group)
      - role: engineer
        groups: [engineering]
      - role: finance
        emails: [cfo@example.com]
    permissions:                # Temporal-style "<namespace>:<role>" claims
      claim: permissions
      roles: {read: engineer, admin: finance}
    groups_claim: groups
    trust_unverified_email: false   # see below
    step_up:                    # stronger sign-in for some data (all matching rules apply)
      - namespaces: ["prod-*"]
        classifications: ["pci", "phi"]   # default: every classification
        acr: ["urn:example:mfa"]          # any one of these acr values
        amr: ["mfa"]                      # every one of these methods
        max_age: 900                      # seconds since auth_time
    grants:                     # just-in-time access (see docs/grants.md)
      namespaces: ["prod-*"]            # where grants may be requested
      classifications: ["*"]
      max_duration: 14400               # seconds; longer requests are refused
      requesters: {groups: [engineering]}   # default: anyone authenticated
      approvers: {groups: [security-oncall]}

An ``emails`` binding matches only a token whose ``email_verified`` claim is
the JSON boolean ``true``: many IdPs let users set an unverified address, and
an address someone merely typed in must not grant a role. For an IdP that
never sends ``email_verified`` (and only issues addresses it controls), set
``trust_unverified_email: true``; prefer ``subjects`` or ``groups`` bindings.

The groups and permissions claims must be lists of strings; a token carrying
anything else is refused (401) rather than interpreted.

Unlabelled payloads have the classification ``unclassified``. Everything not
granted is denied; a permission claim only grants its role inside the namespace
it names (and only where the role's own patterns also allow that namespace).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from temporal_shield.codec import ConfigError
from temporal_shield.converter import read_toml

from ._identity import Identity

OPERATIONS = frozenset({"decode", "encode"})
UNCLASSIFIED = "unclassified"
DECISION_CACHE_SIZE = 4096
AUTH_TIME_SKEW = 60.0
"""Seconds an ``auth_time`` may lie in the future (the IdP's clock ahead of ours)."""


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled matcher for a list of glob patterns (none: matches nothing)."""
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


@dataclass(frozen=True)
class Role:
    """What holders of a role may do."""

    name: str
    namespaces: tuple[str, ...]
    operations: frozenset[str]
    classifications: tuple[str, ...]
    _namespace_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _classification_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once: glob matching is on the per-payload path.
        object.__setattr__(self, "_namespace_re", _globs(self.namespaces))
        object.__setattr__(self, "_classification_re", _globs(self.classifications))

    def allows(self, namespace: str, operation: str, classification: str) -> bool:
        """Whether this role permits ``operation`` on ``classification`` in ``namespace``."""
        return (
            operation in self.operations
            and self._namespace_re.match(namespace) is not None
            and self._classification_re.match(classification or UNCLASSIFIED) is not None
        )


@dataclass(frozen=True)
class Who:
    """A set of people named by subjects, verified emails or groups (a binding without a role)."""

    subjects: frozenset[str] = frozenset()
    emails: frozenset[str] = frozenset()
    """Lower-cased addresses; they match only a verified ``email`` claim (unless trusted)."""
    groups: frozenset[str] = frozenset()
    trust_unverified_email: bool = False
    """Let ``emails`` match without ``email_verified: true`` (the policy's setting)."""

    def matches(self, identity: Identity) -> bool:
        """Whether ``identity`` is one of these people."""
        return (
            identity.subject in self.subjects
            or (
                bool(identity.email)
                and (identity.email_verified or self.trust_unverified_email)
                and identity.email.lower() in self.emails
            )
            or bool(identity.groups & self.groups)
        )


@dataclass(frozen=True)
class Binding:
    """Grants ``role`` to the people ``who`` names."""

    role: str
    who: Who

    def matches(self, identity: Identity) -> bool:
        """Whether ``identity`` is bound by this entry."""
        return self.who.matches(identity)


@dataclass(frozen=True)
class StepUpRule:
    """A stronger authentication that reading some data requires."""

    namespaces: tuple[str, ...]
    classifications: tuple[str, ...] = ("*",)
    acr: tuple[str, ...] = ()
    """Any one of these ``acr`` values (empty: no requirement)."""
    amr: frozenset[str] = frozenset()
    """Every one of these ``amr`` methods."""
    max_age: float | None = None
    """Most seconds since ``auth_time``."""
    _namespace_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _classification_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_namespace_re", _globs(self.namespaces))
        object.__setattr__(self, "_classification_re", _globs(self.classifications))

    def applies(self, namespace: str, classification: str) -> bool:
        """Whether this rule covers ``classification`` payloads in ``namespace``."""
        return (
            self._namespace_re.match(namespace) is not None
            and self._classification_re.match(classification or UNCLASSIFIED) is not None
        )

    def unmet(self, identity: Identity, now: float) -> list[str]:
        """What ``identity`` lacks for this rule at time ``now`` (empty: satisfied).

        Depends on the time (``max_age``): never reuse an answer for another moment.
        """
        missing = []
        if self.acr and identity.acr not in self.acr:
            missing.append(self._acr_text())
        lacking = self.amr - identity.amr
        if lacking:
            missing.append(f"amr {', '.join(sorted(lacking))}")
        if self.max_age is not None and (
            # A sign-in further in the future than clock skew explains proves
            # nothing (it would satisfy max_age for ever).
            identity.auth_time is None
            or not -AUTH_TIME_SKEW <= now - identity.auth_time <= self.max_age
        ):
            missing.append(self._age_text())
        return missing

    def requirements(self) -> list[str]:
        """Everything this rule asks for, in the words of :meth:`unmet`."""
        needs = []
        if self.acr:
            needs.append(self._acr_text())
        if self.amr:
            needs.append(f"amr {', '.join(sorted(self.amr))}")
        if self.max_age is not None:
            needs.append(self._age_text())
        return needs

    def _acr_text(self) -> str:
        return f"acr {' or '.join(self.acr)}"

    def _age_text(self) -> str:
        return f"sign-in within the last {self.max_age:g} s"


@dataclass(frozen=True)
class GrantRules:
    """Who may request and approve just-in-time grants, for what, and for how long."""

    namespaces: tuple[str, ...]
    classifications: tuple[str, ...] = ("*",)
    max_duration: float = 4 * 3600.0
    requesters: Who | None = None
    """Who may request (``None``: anyone authenticated)."""
    approvers: Who = field(default_factory=Who)
    _namespace_re: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _classification_re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_namespace_re", _globs(self.namespaces))
        object.__setattr__(self, "_classification_re", _globs(self.classifications))

    def requestable(self, namespace: str, classification: str) -> bool:
        """Whether a grant for ``classification`` in ``namespace`` may be requested."""
        return (
            self._namespace_re.match(namespace) is not None
            and self._classification_re.match(classification or UNCLASSIFIED) is not None
        )

    def may_request(self, identity: Identity) -> bool:
        """Whether ``identity`` may request grants at all."""
        return self.requesters is None or self.requesters.matches(identity)

    def may_approve(self, identity: Identity) -> bool:
        """Whether ``identity`` may approve or deny (never its own request: checked apart)."""
        return self.approvers.matches(identity)


@dataclass(frozen=True)
class Decision:
    """The outcome of one authorisation check."""

    allowed: bool
    role: str = ""
    """The granting role (empty when denied)."""


@dataclass(frozen=True)
class Policy:
    """A parsed RBAC policy; immutable, safe to share."""

    roles: Mapping[str, Role]
    bindings: tuple[Binding, ...]
    permission_roles: Mapping[str, str]
    """Temporal permission role name → policy role name."""
    permissions_claim: str = "permissions"
    groups_claim: str = "groups"
    step_up: tuple[StepUpRule, ...] = ()
    """Stronger authentication required for some data (every matching rule applies)."""
    grants: GrantRules | None = None
    """Just-in-time grants (``None``: not offered)."""
    _decisions: dict[tuple[Identity, str, str, str], Decision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _step_ups: dict[tuple[str, str], tuple[StepUpRule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def roles_for(self, identity: Identity, namespace: str) -> list[Role]:
        """Roles ``identity`` holds in ``namespace``."""
        found = [self.roles[b.role] for b in self.bindings if b.matches(identity)]
        for permission in identity.permissions:
            ns, _, temporal_role = permission.rpartition(":")
            role = self.permission_roles.get(temporal_role)
            if role and ns == namespace:
                found.append(self.roles[role])
        return found

    def decide(
        self, identity: Identity, namespace: str, operation: str, classification: str
    ) -> Decision:
        """Allow or deny one operation on one payload class; denied by default.

        The policy is immutable, so decisions are memoised (bounded) per identity,
        namespace, operation and classification: a busy caller asks the same
        question for every payload.
        """
        key = (identity, namespace, operation, classification)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(identity, namespace, operation, classification)
            if len(self._decisions) >= DECISION_CACHE_SIZE:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(
        self, identity: Identity, namespace: str, operation: str, classification: str
    ) -> Decision:
        for role in self.roles_for(identity, namespace):
            if role.allows(namespace, operation, classification):
                return Decision(True, role.name)
        return Decision(False)

    def step_up_rules(self, namespace: str, classification: str) -> tuple[StepUpRule, ...]:
        """The step-up rules covering ``classification`` payloads in ``namespace``.

        Memoised (bounded) like :meth:`decide`: the rules never change, and
        every payload of a request asks. Whether a rule is *met* depends on
        the time, so that is never memoised here (see :meth:`StepUpRule.unmet`).
        """
        if not self.step_up:
            return ()
        key = (namespace, classification)
        rules = self._step_ups.get(key)
        if rules is None:
            rules = tuple(rule for rule in self.step_up if rule.applies(namespace, classification))
            if len(self._step_ups) >= DECISION_CACHE_SIZE:
                self._step_ups.clear()
            self._step_ups[key] = rules
        return rules

    def roles_allowing(self, namespace: str, operation: str, classification: str) -> list[str]:
        """Names of the roles that permit ``operation`` on ``classification`` in ``namespace``.

        Only role names (what a readable denial may say); never who holds them.
        """
        return sorted(
            name
            for name, role in self.roles.items()
            if role.allows(namespace, operation, classification)
        )

    # -- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> Policy:
        """Read a YAML (``.yaml``/``.yml``) or TOML policy file.

        Raises:
            ConfigError: unreadable or invalid policy.
        """
        if path.suffix in (".yaml", ".yml"):
            try:
                doc = yaml.safe_load(path.read_text())
            except OSError as exc:
                raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"policy {path} is not valid YAML: {exc}") from None
        else:
            doc = read_toml(path)
        return cls.from_mapping(doc, str(path))

    @classmethod
    def from_mapping(cls, doc: Any, where: str = "policy") -> Policy:
        """Validate and build a policy from parsed YAML/TOML.

        Raises:
            ConfigError: unknown keys, unknown roles or operations, wrong types.
        """
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where}: must be a mapping")
        _only(
            doc,
            {
                "roles",
                "bindings",
                "permissions",
                "groups_claim",
                "trust_unverified_email",
                "step_up",
                "grants",
            },
            where,
        )
        trust_unverified_email = doc.get("trust_unverified_email", False)
        if not isinstance(trust_unverified_email, bool):
            raise ConfigError(f"{where}: trust_unverified_email must be true or false")
        roles = {}
        for name, spec in _mapping(doc.get("roles", {}), f"{where}: roles").items():
            at = f"{where}: role {name}"
            spec = _mapping(spec, at)
            _only(spec, {"namespaces", "operations", "classifications"}, at)
            ops = frozenset(_strings(spec.get("operations", []), f"{at} operations"))
            if not ops <= OPERATIONS:
                raise ConfigError(f"{at}: unknown operation(s) {sorted(ops - OPERATIONS)}")
            roles[str(name)] = Role(
                name=str(name),
                namespaces=tuple(_strings(spec.get("namespaces", []), f"{at} namespaces")),
                operations=ops,
                classifications=tuple(
                    _strings(spec.get("classifications", []), f"{at} classifications")
                ),
            )
        bindings = []
        for i, spec in enumerate(_sequence(doc.get("bindings", []), f"{where}: bindings")):
            spec = _mapping(spec, f"{where}: binding {i}")
            _only(spec, {"role", "subjects", "emails", "groups"}, f"{where}: binding {i}")
            role = str(spec.get("role", ""))
            if role not in roles:
                raise ConfigError(f"{where}: binding {i} names unknown role {role!r}")
            who = _who(
                {k: v for k, v in spec.items() if k != "role"},
                f"{where}: binding {i}",
                trust_unverified_email,
            )
            bindings.append(Binding(role=role, who=who))
        perms = _mapping(doc.get("permissions", {}), f"{where}: permissions")
        _only(perms, {"claim", "roles"}, f"{where}: permissions")
        permission_roles = {
            str(k): str(v)
            for k, v in _mapping(perms.get("roles", {}), f"{where}: permissions roles").items()
        }
        unknown = set(permission_roles.values()) - set(roles)
        if unknown:
            raise ConfigError(f"{where}: permissions map to unknown role(s) {sorted(unknown)}")
        step_up = tuple(
            _step_up_rule(spec, f"{where}: step_up {i}")
            for i, spec in enumerate(_sequence(doc.get("step_up", []), f"{where}: step_up"))
        )
        grants = (
            _grant_rules(doc["grants"], f"{where}: grants", trust_unverified_email)
            if doc.get("grants") is not None
            else None
        )
        return cls(
            roles=roles,
            bindings=tuple(bindings),
            permission_roles=permission_roles,
            permissions_claim=str(perms.get("claim", "permissions")),
            groups_claim=str(doc.get("groups_claim", "groups")),
            step_up=step_up,
            grants=grants,
        )


def _seconds(value: Any, where: str) -> float:
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not 0 < value < float("inf")
    ):
        raise ConfigError(f"{where}: must be a positive number of seconds")
    return float(value)


def _step_up_rule(spec: Any, where: str) -> StepUpRule:
    spec = _mapping(spec, where)
    _only(spec, {"namespaces", "classifications", "acr", "amr", "max_age"}, where)
    namespaces = tuple(_strings(spec.get("namespaces", []), f"{where} namespaces"))
    if not namespaces:
        raise ConfigError(f"{where}: namespaces must name at least one pattern")
    acr = tuple(_strings(spec.get("acr", []), f"{where} acr"))
    amr = frozenset(_strings(spec.get("amr", []), f"{where} amr"))
    if "" in acr or "" in amr:
        # A token without an acr claim has acr "": an empty value would be met by it.
        raise ConfigError(f"{where}: acr and amr values must not be empty")
    max_age = _seconds(spec["max_age"], f"{where} max_age") if "max_age" in spec else None
    if not acr and not amr and max_age is None:
        raise ConfigError(f"{where}: needs at least one of acr, amr, max_age")
    return StepUpRule(
        namespaces=namespaces,
        classifications=tuple(
            _strings(spec.get("classifications", ["*"]), f"{where} classifications")
        ),
        acr=acr,
        amr=amr,
        max_age=max_age,
    )


def _who(spec: Any, where: str, trust_unverified_email: bool) -> Who:
    spec = _mapping(spec, where)
    _only(spec, {"subjects", "emails", "groups"}, where)
    return Who(
        subjects=frozenset(_strings(spec.get("subjects", []), f"{where} subjects")),
        emails=frozenset(e.lower() for e in _strings(spec.get("emails", []), f"{where} emails")),
        groups=frozenset(_strings(spec.get("groups", []), f"{where} groups")),
        trust_unverified_email=trust_unverified_email,
    )


def _grant_rules(spec: Any, where: str, trust_unverified_email: bool) -> GrantRules:
    spec = _mapping(spec, where)
    _only(
        spec,
        {"namespaces", "classifications", "max_duration", "requesters", "approvers"},
        where,
    )
    namespaces = tuple(_strings(spec.get("namespaces", []), f"{where} namespaces"))
    if not namespaces:
        raise ConfigError(f"{where}: namespaces must name at least one pattern")
    if "approvers" not in spec:
        raise ConfigError(f"{where}: approvers is required (who may approve a grant)")
    approvers = _who(spec["approvers"], f"{where} approvers", trust_unverified_email)
    if not (approvers.subjects or approvers.emails or approvers.groups):
        raise ConfigError(f"{where}: approvers must name someone")
    return GrantRules(
        namespaces=namespaces,
        classifications=tuple(
            _strings(spec.get("classifications", ["*"]), f"{where} classifications")
        ),
        max_duration=_seconds(spec.get("max_duration", 4 * 3600), f"{where} max_duration"),
        requesters=(
            _who(spec["requesters"], f"{where} requesters", trust_unverified_email)
            if "requesters" in spec
            else None
        ),
        approvers=approvers,
    )


def _only(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: must be a list")
    return value


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: must be a list of strings")
    return value
