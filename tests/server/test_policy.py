"""Policy evaluation details: compiled globs and the bounded decision cache."""

from __future__ import annotations

from temporal_shield.server import Identity, Policy
from temporal_shield.server._policy import DECISION_CACHE_SIZE


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
