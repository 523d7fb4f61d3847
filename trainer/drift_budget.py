"""The drift budget in training: stop a round before its policy leaves the region the ``kl_base`` gate allows.

DPO's loss keeps falling as the policy pushes the rejected answers' probability down, and the
reference term only slows it: in the demo one round on twice the votes went from 0.05 to 0.32
nats/token of KL to the base, with made-up words appearing, and the gate then threw the whole
round away. A trust region (TRPO, PPO's early stop on KL) treats drift as a budget instead:
every ``drift_check_steps`` optimizer steps the policy answers a few of its own training
prompts greedily and the exact per-token KL(policy || base) is measured on those answers (the
gates' computation, ``trainer.gates.mean_token_kl``). When a check measures more than
``drift_budget`` x ``FLYWHEEL_GATE_MAX_KL_BASE``, training stops and the adapter weights of the
last check within the budget (or those the round began with) are put back. The gate still
measures the result on held-out prompts; the budget keeps a round from spending its steps on a
candidate that cannot pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.gates import generate, mean_token_kl
from trainer.policy import base_view


@dataclass
class DriftChecks:
    """What the checks measured: (optimizer step, KL to the base) each time, and where training stopped."""

    limit: float
    measured: list[tuple[int, float]] = field(default_factory=list)
    stopped_at: int | None = None  # the step whose check broke the budget
    kept_step: int = 0  # the step whose weights the candidate has

    def metrics(self) -> dict[str, float]:
        last = self.measured[-1][1] if self.measured else float("nan")
        return {"drift_budget": self.limit, "drift_checks": float(len(self.measured)), "drift_last_kl_base": last,
                "drift_stopped": float(self.stopped_at is not None), "drift_kept_step": float(self.kept_step)}

    def describe(self) -> str:
        if self.stopped_at is None:
            return ""
        return (f"drift budget: KL to the base {self.measured[-1][1]:.3f} > {self.limit:.3f} at step "
                f"{self.stopped_at}; kept the weights of step {self.kept_step}")


def keep_within_drift(
    trainer: Any, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], limit: float, every: int,
    max_new_tokens: int,
) -> DriftChecks:
    """Add the budget's callback to ``trainer`` (a TRL trainer whose model is a PeftModel); returns its record."""
    from transformers import TrainerCallback

    checks = DriftChecks(limit)
    prompts = list(prompts)

    def trainable(model: Any) -> dict[str, Any]:
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def measure(model: Any) -> float:
        was_training = model.training
        answers = generate(model, tokenizer, prompts, max_new_tokens)
        kl = mean_token_kl(model, tokenizer, prompts, answers, reference=base_view)
        model.train(was_training)
        return kl

    class _Budget(TrainerCallback):
        def __init__(self) -> None:
            self.kept: dict[str, Any] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self.kept = trainable(model)

        def _check(self, state: Any, control: Any, model: Any) -> None:
            kl = measure(model)
            checks.measured.append((state.global_step, kl))
            if kl <= limit:
                self.kept, checks.kept_step = trainable(model), state.global_step
                return
            checks.stopped_at = state.global_step
            for name, param in model.named_parameters():
                if name in self.kept:
                    param.data.copy_(self.kept[name])
            control.should_training_stop = True

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % every == 0:
                self._check(state, control, model)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            # The steps after the last check may have overspent too.
            if checks.stopped_at is None and checks.kept_step != state.global_step:
                self._check(state, control, model)

    trainer.add_callback(_Budget())
    return checks
