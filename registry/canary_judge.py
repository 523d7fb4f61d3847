"""The automatic canary decision, applied: read the evidence, run the rule, move the aliases with the evidence.

``CanaryJudge.check`` is one look: the running canary's evidence from accepted feedback since
it began (``canary_rule.evidence``), the rule's decision, and, unless it says continue, the
audited alias moves (``Promotion.conclude_canary``) that carry the test statistics, so the
history says why a rollback nobody typed happened. Every gateway runs it on a timer; the
registry lock and the "is it still the same canary" check make the first decision the only one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from registry.canary_rule import CanaryRule, Decision, decide, evidence
from registry.model_versions import CHAMPION
from registry.promotion import Canary, Promotion, RegistryError

log = logging.getLogger(__name__)

ACTOR = "system:canary"
"""Who the audit trail names for an automatic canary decision."""


class CanaryJudge:
    """Applies ``rule`` to the running canary of ``registry``."""

    def __init__(self, registry: Promotion, rule: CanaryRule, actor: str = ACTOR) -> None:
        self.registry = registry
        self.rule = rule
        self.actor = actor

    def look(self, now: datetime | None = None) -> tuple[Canary, Decision] | None:
        """What the rule says about the running canary now, without acting (None: no canary with users runs)."""
        canary = self.registry.canary()
        if canary is None or canary.percent <= 0:
            return None
        champion = self.registry.alias_version(CHAMPION)
        if champion is None:
            return None
        with self.registry.factory() as session:
            seen = evidence(session, canary.version, str(champion.version), canary.since, now or datetime.now(UTC))
        return canary, decide(self.rule, seen)

    def check(self, now: datetime | None = None) -> Decision | None:
        """One look at the canary, acted on; returns the decision (None: no canary runs, or it changed meanwhile)."""
        looked = self.look(now)
        if looked is None:
            return None
        canary, decision = looked
        if decision.action == "continue":
            return decision
        try:
            self.registry.conclude_canary(canary, decision.action, self.actor, decision.reason,
                                          {"decision": decision.action, **decision.evidence})
        except RegistryError as exc:
            log.info("canary decision %s not applied: %s", decision.action, exc)
            return None
        log.warning("canary of version %s: %s (%s)", canary.version, decision.action, decision.reason)
        return decision
