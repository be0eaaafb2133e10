"""Policy evaluation details: compiled globs, bounded caches, step_up and grants validation."""

from __future__ import annotations

import re
from typing import Any

import pytest

from temporal_shield.codec import ConfigError
from temporal_shield.server import Identity, Policy
from temporal_shield.server._policy import DECISION_CACHE_SIZE, Who


def _policy(namespaces: list[str], classifications: list[str]) -> Policy:
    return Policy.from_mapping(
        {
            "roles": {
                "r": {
                    "namespaces": namespaces,
                    "operations": ["decode"],
                    "classifications": classifications,
                }
            },
            "bindings": [{"role": "r", "groups": ["g"]}],
        }
    )


def test_globs_are_anchored_case_sensitive_and_empty_means_nothing() -> None:
    who = Identity(subject="s", groups=frozenset({"g"}))
    policy = _policy(["dev-*", "prod-[ab]", "exact"], ["internal", "pci-?"])
    allowed = [
        ("dev-team", "internal"),
        ("prod-a", "pci-1"),
        ("exact", ""),  # unlabelled is "unclassified": not granted here
    ]
    assert [policy.decide(who, ns, "decode", c).allowed for ns, c in allowed] == [
        True,
        True,
        False,
    ]
    for namespace in ("xdev-team", "Dev-team", "prod-c", "exact2", "exac"):
        assert not policy.decide(who, namespace, "decode", "internal").allowed
    assert not policy.decide(who, "dev-team", "decode", "pci-10").allowed
    assert not policy.decide(who, "dev-team", "encode", "internal").allowed
    nothing = _policy([], ["*"])
    assert not nothing.decide(who, "dev-team", "decode", "internal").allowed


def test_decision_cache_is_bounded_and_agrees_with_evaluation() -> None:
    policy = _policy(["dev-*"], ["*"])
    for i in range(DECISION_CACHE_SIZE + 50):
        who = Identity(subject=f"user-{i}", groups=frozenset({"g"} if i % 2 else set()))
        first = policy.decide(who, "dev-x", "decode", "internal")
        assert first == policy._decide(who, "dev-x", "decode", "internal")
        assert first.allowed == bool(i % 2)
        assert policy.decide(who, "dev-x", "decode", "internal") is first  # memoised
    assert len(policy._decisions) <= DECISION_CACHE_SIZE


# -- step_up and grants sections -------------------------------------------------------

_BASE: dict[str, Any] = {
    "roles": {"r": {"namespaces": ["*"], "operations": ["decode"], "classifications": ["*"]}},
    "bindings": [{"role": "r", "groups": ["g"]}],
}
_RULE = {"namespaces": ["prod-*"], "acr": ["urn:mfa"]}
_GRANTS = {"namespaces": ["prod-*"], "approvers": {"groups": ["security"]}}


def _with(**sections: Any) -> Policy:
    return Policy.from_mapping({**_BASE, **sections}, "p.yaml")


@pytest.mark.parametrize(
    ("step_up", "message"),
    [
        ({"step_up": {"namespaces": ["x"]}}, "p.yaml: step_up: must be a list"),
        ({"step_up": ["prod-*"]}, "p.yaml: step_up 0: must be a mapping"),
        ({"step_up": [{**_RULE, "acrs": ["x"]}]}, "p.yaml: step_up 0: unknown key(s) ['acrs']"),
        ({"step_up": [{"acr": ["x"]}]}, "p.yaml: step_up 0: namespaces must name at least one"),
        ({"step_up": [{**_RULE, "namespaces": []}]}, "namespaces must name at least one"),
        ({"step_up": [{**_RULE, "namespaces": "prod-*"}]}, "step_up 0 namespaces: must be a list"),
        ({"step_up": [{"namespaces": ["x"]}]}, "needs at least one of acr, amr, max_age"),
        (
            {"step_up": [{"namespaces": ["x"], "acr": [], "amr": []}]},
            "needs at least one of acr, amr, max_age",
        ),
        ({"step_up": [{**_RULE, "acr": "urn:mfa"}]}, "p.yaml: step_up 0 acr: must be a list"),
        ({"step_up": [{**_RULE, "amr": ["mfa", 2]}]}, "step_up 0 amr: must be a list of strings"),
        ({"step_up": [{**_RULE, "acr": [""]}]}, "acr and amr values must not be empty"),
        ({"step_up": [{"namespaces": ["x"], "amr": [""]}]}, "acr and amr values must not be empty"),
        ({"step_up": [{**_RULE, "max_age": 0}]}, "max_age: must be a positive number"),
        ({"step_up": [{**_RULE, "max_age": -5}]}, "max_age: must be a positive number"),
        ({"step_up": [{**_RULE, "max_age": "900"}]}, "max_age: must be a positive number"),
        ({"step_up": [{**_RULE, "max_age": True}]}, "max_age: must be a positive number"),
        ({"step_up": [{**_RULE, "max_age": float("inf")}]}, "max_age: must be a positive number"),
        ({"step_up": [{**_RULE, "max_age": float("nan")}]}, "max_age: must be a positive number"),
        (
            {"step_up": [_RULE, {**_RULE, "classifications": "pci"}]},
            "step_up 1 classifications: must be a list",
        ),
    ],
    ids=repr,
)
def test_step_up_section_is_validated(step_up: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _with(**step_up)


@pytest.mark.parametrize(
    ("grants", "message"),
    [
        (["prod-*"], "p.yaml: grants: must be a mapping"),
        ({**_GRANTS, "approver": {}}, "p.yaml: grants: unknown key(s) ['approver']"),
        ({"approvers": {"groups": ["s"]}}, "grants: namespaces must name at least one"),
        ({**_GRANTS, "namespaces": []}, "grants: namespaces must name at least one"),
        ({"namespaces": ["prod-*"]}, "grants: approvers is required"),
        ({**_GRANTS, "approvers": {}}, "grants: approvers must name someone"),
        (
            {**_GRANTS, "approvers": {"groups": [], "subjects": []}},
            "grants: approvers must name someone",
        ),
        ({**_GRANTS, "approvers": ["security"]}, "grants approvers: must be a mapping"),
        (
            {**_GRANTS, "approvers": {"teams": ["s"]}},
            "grants approvers: unknown key(s) ['teams']",
        ),
        (
            {**_GRANTS, "approvers": {"groups": "security"}},
            "grants approvers groups: must be a list of strings",
        ),
        (
            {**_GRANTS, "requesters": {"emails": [1]}},
            "grants requesters emails: must be a list of strings",
        ),
        ({**_GRANTS, "max_duration": 0}, "max_duration: must be a positive number"),
        ({**_GRANTS, "max_duration": "4h"}, "max_duration: must be a positive number"),
        ({**_GRANTS, "classifications": "pci"}, "grants classifications: must be a list"),
    ],
    ids=repr,
)
def test_grants_section_is_validated(grants: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _with(grants=grants)


def test_step_up_and_grants_sections_parse() -> None:
    policy = _with(
        step_up=[
            {"namespaces": ["prod-*"], "acr": ["urn:mfa"], "max_age": 900},
            {"namespaces": ["prod-*"], "classifications": ["pci"], "amr": ["hwk"]},
        ],
        grants={
            **_GRANTS,
            "classifications": ["pci"],
            "max_duration": 3600,
            "requesters": {"emails": ["Eng@Example.com"]},
        },
    )
    assert [r.max_age for r in policy.step_up_rules("prod-a", "internal")] == [900.0]
    assert len(policy.step_up_rules("prod-a", "pci")) == 2
    assert policy.step_up_rules("dev-a", "pci") == ()
    assert policy.step_up_rules("prod-a", "") == policy.step_up_rules("prod-a", "unclassified")
    grants = policy.grants
    assert grants is not None
    assert grants.max_duration == 3600.0
    assert grants.requestable("prod-a", "pci")
    assert not grants.requestable("prod-a", "internal")
    assert not grants.requestable("dev-a", "pci")
    verified = Identity(subject="x", email="eng@example.com", email_verified=True)
    assert grants.may_request(verified)
    assert not grants.may_request(Identity(subject="x", email="eng@example.com"))
    assert grants.may_approve(Identity(subject="y", groups=frozenset({"security"})))
    assert not grants.may_approve(verified)
    trusting = Policy.from_mapping(
        {
            **_BASE,
            "trust_unverified_email": True,
            "grants": {**_GRANTS, "requesters": {"emails": ["eng@example.com"]}},
        }
    ).grants
    assert trusting is not None
    assert trusting.may_request(Identity(subject="x", email="eng@example.com"))
    # Unclassified payloads are "unclassified" to grants too.
    star = _with(grants=_GRANTS).grants
    assert star is not None
    assert star.requestable("prod-a", "")
    # No sections: nothing required, nothing offered.
    plain = _with()
    assert plain.step_up == ()
    assert plain.grants is None
    assert plain.step_up_rules("prod-a", "pci") == ()


def test_step_up_unmet_and_requirements_agree() -> None:
    (rule,) = _with(
        step_up=[{"namespaces": ["*"], "acr": ["a", "b"], "amr": ["mfa", "hwk"], "max_age": 60}]
    ).step_up
    now = 1_000_000.0
    nothing = Identity(subject="s")
    assert rule.unmet(nothing, now) == rule.requirements()
    assert rule.requirements() == ["acr a or b", "amr hwk, mfa", "sign-in within the last 60 s"]
    enough = Identity(subject="s", acr="b", amr=frozenset({"mfa", "hwk", "pwd"}), auth_time=now)
    assert rule.unmet(enough, now) == []
    assert rule.unmet(enough, now + 60) == []
    assert rule.unmet(enough, now + 61) == ["sign-in within the last 60 s"]
    half = Identity(subject="s", acr="c", amr=frozenset({"mfa"}), auth_time=now)
    assert rule.unmet(half, now) == ["acr a or b", "amr hwk"]


def test_step_up_rule_lookup_is_memoised_and_bounded() -> None:
    policy = _with(step_up=[_RULE])
    first = policy.step_up_rules("prod-a", "pci")
    assert policy.step_up_rules("prod-a", "pci") is first
    for i in range(DECISION_CACHE_SIZE + 10):
        assert len(policy.step_up_rules(f"prod-{i}", "pci")) == 1
        assert policy.step_up_rules(f"dev-{i}", "pci") == ()
    assert len(policy._step_ups) <= DECISION_CACHE_SIZE


def test_bindings_match_through_who_as_before() -> None:
    """A binding is a role plus the same matcher grant rules use (one copy of the logic)."""
    policy = Policy.from_mapping(
        {
            **_BASE,
            "bindings": [
                {"role": "r", "subjects": ["alice"]},
                {"role": "r", "emails": ["Bob@Example.com"]},
                {"role": "r", "groups": ["g"]},
            ],
        }
    )
    cases = [
        (Identity(subject="alice"), True),
        (Identity(subject="Alice"), False),
        (Identity(subject="x", email="bob@example.COM", email_verified=True), True),
        (Identity(subject="x", email="bob@example.com"), False),  # unverified
        (Identity(subject="x", groups=frozenset({"g", "h"})), True),
        (Identity(subject="x", groups=frozenset({"G"})), False),
        (Identity(subject="x"), False),
    ]
    for who, bound in cases:
        assert policy.decide(who, "ns", "decode", "pci").allowed is bound, who
    trusting = Policy.from_mapping(
        {**_BASE, "bindings": [{"role": "r", "emails": ["bob@example.com"]}]}
        | {"trust_unverified_email": True}
    )
    assert trusting.decide(Identity(subject="x", email="bob@example.com"), "ns", "decode", "")
    assert trusting.bindings[0].who == Who(
        emails=frozenset({"bob@example.com"}), trust_unverified_email=True
    )
    with pytest.raises(ConfigError, match=re.escape("policy: binding 0: unknown key(s) ['team']")):
        Policy.from_mapping({**_BASE, "bindings": [{"role": "r", "team": ["g"]}]})
    with pytest.raises(ConfigError, match=re.escape("binding 0 groups: must be a list of strings")):
        Policy.from_mapping({**_BASE, "bindings": [{"role": "r", "groups": "g"}]})
