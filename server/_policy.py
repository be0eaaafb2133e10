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

Unlabelled payloads have the classification ``unclassified``. Everything not
granted is denied; a permission claim only grants its role inside the namespace
it names (and only where the role's own patterns also allow that namespace).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from temporal_shield.codec import ConfigError
from temporal_shield.converter import read_toml

from ._identity import Identity

OPERATIONS = frozenset({"decode", "encode"})
UNCLASSIFIED = "unclassified"


@dataclass(frozen=True)
class Role:
    """What holders of a role may do."""

    name: str
    namespaces: tuple[str, ...]
    operations: frozenset[str]
    classifications: tuple[str, ...]

    def allows(self, namespace: str, operation: str, classification: str) -> bool:
        """Whether this role permits ``operation`` on ``classification`` in ``namespace``."""
        label = classification or UNCLASSIFIED
        return (
            operation in self.operations
            and any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces)
            and any(fnmatch.fnmatchcase(label, p) for p in self.classifications)
        )


@dataclass(frozen=True)
class Binding:
    """Grants ``role`` to any of the listed subjects, emails or groups."""

    role: str
    subjects: frozenset[str]
    emails: frozenset[str]
    groups: frozenset[str]

    def matches(self, identity: Identity) -> bool:
        """Whether ``identity`` is bound by this entry."""
        return (
            identity.subject in self.subjects
            or (bool(identity.email) and identity.email.lower() in self.emails)
            or bool(identity.groups & self.groups)
        )


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
        """Allow or deny one operation on one payload class; denied by default."""
        for role in self.roles_for(identity, namespace):
            if role.allows(namespace, operation, classification):
                return Decision(True, role.name)
        return Decision(False)

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
        _only(doc, {"roles", "bindings", "permissions", "groups_claim"}, where)
        roles = {}
        for name, spec in _mapping(doc.get("roles", {}), f"{where}: roles").items():
            spec = _mapping(spec, f"{where}: role {name}")
            _only(spec, {"namespaces", "operations", "classifications"}, f"{where}: role {name}")
            ops = frozenset(_strings(spec.get("operations", []), f"role {name} operations"))
            if not ops <= OPERATIONS:
                raise ConfigError(
                    f"{where}: role {name}: unknown operation(s) {sorted(ops - OPERATIONS)}"
                )
            roles[str(name)] = Role(
                name=str(name),
                namespaces=tuple(_strings(spec.get("namespaces", []), f"role {name} namespaces")),
                operations=ops,
                classifications=tuple(
                    _strings(spec.get("classifications", []), f"role {name} classifications")
                ),
            )
        bindings = []
        for i, spec in enumerate(_sequence(doc.get("bindings", []), f"{where}: bindings")):
            spec = _mapping(spec, f"{where}: binding {i}")
            _only(spec, {"role", "subjects", "emails", "groups"}, f"{where}: binding {i}")
            role = str(spec.get("role", ""))
            if role not in roles:
                raise ConfigError(f"{where}: binding {i} names unknown role {role!r}")
            bindings.append(
                Binding(
                    role=role,
                    subjects=frozenset(_strings(spec.get("subjects", []), "subjects")),
                    emails=frozenset(e.lower() for e in _strings(spec.get("emails", []), "emails")),
                    groups=frozenset(_strings(spec.get("groups", []), "groups")),
                )
            )
        perms = _mapping(doc.get("permissions", {}), f"{where}: permissions")
        _only(perms, {"claim", "roles"}, f"{where}: permissions")
        permission_roles = {
            str(k): str(v) for k, v in _mapping(perms.get("roles", {}), "permissions.roles").items()
        }
        unknown = set(permission_roles.values()) - set(roles)
        if unknown:
            raise ConfigError(f"{where}: permissions map to unknown role(s) {sorted(unknown)}")
        return cls(
            roles=roles,
            bindings=tuple(bindings),
            permission_roles=permission_roles,
            permissions_claim=str(perms.get("claim", "permissions")),
            groups_claim=str(doc.get("groups_claim", "groups")),
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
        raise ConfigError(f"policy {where}: must be a list of strings")
    return value
