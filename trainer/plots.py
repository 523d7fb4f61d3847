"""What a person looks at after a round: loss, reward margin and win rate, saved as PNGs with the run.

Drawn from the trainers' log histories (one entry per logged step) with matplotlib's Agg
backend, so it works on a headless trainer job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARGIN_KEYS = ("rewards/margins", "margin")  # DPO/KTO log the former, TRL's reward trainer the latter


def _series(history: list[dict[str, Any]], *keys: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for entry in history:
        key = next((k for k in keys if k in entry), None)
        if key is not None and "step" in entry:
            steps.append(float(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def save_plots(
    out_dir: Path,
    policy_history: list[dict[str, Any]],
    reward_history: list[dict[str, Any]],
    win_rate: float | None,
    win_rate_ci: tuple[float, float] | None,
    win_rate_threshold: float,
) -> list[Path]:
    """Write loss.png, reward_margin.png and (when judged) win_rate.png into ``out_dir``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys, title in (
        ("loss.png", ("loss",), "training loss"),
        ("reward_margin.png", MARGIN_KEYS, "reward margin (chosen - rejected)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, history in (("policy", policy_history), ("reward model", reward_history)):
            steps, values = _series(history, *keys)
            if steps:
                ax.plot(steps, values, marker=".", label=label)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    if win_rate is not None and win_rate_ci is not None:
        fig, ax = plt.subplots(figsize=(4, 3.5))
        low, high = win_rate_ci
        ax.bar(
            ["candidate vs champion"],
            [win_rate],
            yerr=[[win_rate - low], [high - win_rate]],
            capsize=8,
            color="tab:blue" if low > win_rate_threshold else "tab:red",
        )
        ax.axhline(win_rate_threshold, color="gray", linestyle="--", label=f"gate: CI low > {win_rate_threshold:g}")
        ax.set(ylim=(0, 1), ylabel="win rate (reward model)", title="win rate, 95% bootstrap CI")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / "win_rate.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "win_rate.png")
    return written
