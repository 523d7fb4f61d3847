"""Policy training throughput: Flywheel's DPO step beside a bare TRL DPOTrainer run on the same data, same process.

    .venv/bin/python -m tests.bench.bench_trainer [--model PATH] [--pairs 64] [--repeats 2]
    .venv/bin/python -m tests.bench.bench_trainer --cycle --model PATH [--pairs 300]

Both sides train a fresh LoRA (same rank, targets, batch, length, seed) on the same synthetic
preference pairs, one epoch: (a) TRL's DPOTrainer built by hand from a ``Dataset`` of the
pairs, as TRL's docs do it; (b) ``trainer.dpo.dpo_trainer``, Flywheel's policy step (weighted
redraw, its DPOConfig, its progress callback). Each timing covers building the trainer and
``train()``; loading the model from disk is outside both. The sides alternate, ``--repeats``
times each, so the machine's noise hits both alike. Prints pairs/s of each (the best run of
each side) and the ratio Flywheel / bare (target >= 0.9). Default model: a tiny 2-layer Llama
built in a temp dir; ``--model`` takes any local HF folder (e.g. the prepared SmolLM2).

``--cycle`` instead times one whole round (``train_once`` with the default TrainConfig: snapshot
and its GX suite, reward model, DPO, gates, registration) on a temp SQLite store seeded with
``--pairs`` pairwise votes, and prints the wall time of each stage, the process's CPU minutes, the
drift checks and the gate report. ``--algorithm`` picks the policy stage (``flywheel train``'s
choices), ``--max-steps`` caps it, ``--learning-rate`` sets its rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer.base_model import build_tiny_model
from trainer.config import TrainConfig
from trainer.dpo import dpo_args, dpo_trainer
from trainer.pairs import EventKey, PreferencePair
from trainer.policy import lora_config

TOPICS = ["sleep", "tea", "walking", "reading", "cooking", "rain", "music", "running", "gardens", "maps"]


def make_pairs(n: int) -> list[PreferencePair]:
    return [
        PreferencePair(
            prompt_hash=f"h{i}",
            prompt=[{"role": "user", "content": f"Give me a tip about {TOPICS[i % len(TOPICS)]}, number {i}."}],
            chosen=f"Certainly! A good tip about {TOPICS[i % len(TOPICS)]}: keep it simple and steady, {i}.",
            rejected=f"No idea about {TOPICS[i % len(TOPICS)]}.",
            chosen_response_id=f"resp_{i}_a",
            rejected_response_id=f"resp_{i}_b",
            source="pairwise",
            event_ids=(EventKey(1, f"evt_{i}"),),
            weight=1.0,
        )
        for i in range(n)
    ]


def load(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), AutoTokenizer.from_pretrained(
        str(model_dir)
    )


def bare_trl(model_dir: Path, pairs: list[PreferencePair], config: TrainConfig, out: Path) -> float:
    from datasets import Dataset
    from trl import DPOTrainer

    model, tokenizer = load(model_dir)
    started = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=dpo_args(config, out, quiet=True),
        train_dataset=Dataset.from_list([p.to_trl() for p in pairs]),
        processing_class=tokenizer,
        peft_config=lora_config(config),
    )
    trainer.train()
    return time.perf_counter() - started


def flywheel(model_dir: Path, pairs: list[PreferencePair], config: TrainConfig, out: Path) -> float:
    model, tokenizer = load(model_dir)
    started = time.perf_counter()
    trainer = dpo_trainer(model, tokenizer, lora_config(config), pairs, config, out, progress=lambda *_: None)
    trainer.train()
    return time.perf_counter() - started


def full_cycle(model_dir: Path, n_pairs: int, tmp: Path, config: TrainConfig) -> None:
    """Seed a store with ``n_pairs`` voted pairs (as the worker would store them) and time one round."""
    import hashlib
    from datetime import UTC, datetime

    from feedback.db.models import App, Completion, Feedback
    from feedback.db.session import make_engine, session_factory, transaction, upgrade
    from trainer.config import TrainerSettings
    from trainer.round import train_once

    settings = TrainerSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp / "data",
        base_model=model_dir,
        registered_model="bench-policy",
    )
    upgrade(settings.resolved_database_url)
    now = datetime.now(UTC)
    with transaction(session_factory(make_engine(settings.resolved_database_url))) as session:
        app = App(name="bench", key_hash=hashlib.sha256(b"bench").hexdigest(), key_prefix="bench")
        session.add(app)
        session.flush()
        for i, pair in enumerate(make_pairs(n_pairs)):
            prompt = pair.prompt[0]["content"]
            answers = (pair.chosen, pair.rejected) if i % 2 else (pair.rejected, pair.chosen)
            for side, answer in zip("ab", answers, strict=True):
                session.add(
                    Completion(
                        response_id=f"resp_{i}_{side}",
                        event_id=f"evt_c_{i}_{side}",
                        pair_id=f"pair_{i}",
                        app_id=app.id,
                        model_version="1",
                        messages=pair.prompt,
                        prompt_hash=hashlib.sha256(prompt.encode()).hexdigest(),
                        answer=answer,
                        params={},
                        latency_ms=1.0,
                        created_at=now,
                    )
                )
            session.add(
                Feedback(
                    event_id=f"evt_f_{i}",
                    type="pairwise",
                    app_id=app.id,
                    user_id=f"user{i}",
                    pair_id=f"pair_{i}",
                    choice="a" if i % 2 else "b",
                    weight=1.0,
                    created_at=now,
                )
            )
    started, cpu = time.perf_counter(), _cpu_seconds()
    result = train_once(settings, config)
    total, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    print(result.message)
    print(", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "per_step"))
    print(f"one full {result.algorithm} cycle on {n_pairs} pairs: {total:.0f} s ({total / 60:.1f} min), "
          f"{cpu / 60:.1f} CPU min")
    if result.drift is not None:
        print(f"drift checks (step, KL to the base): {result.drift.measured}; limit {result.drift.limit:.3f}; "
              f"{result.drift.describe() or 'never over'}")
    if result.gates is not None:
        for gate in result.gates.gates:
            print(f"gate {gate.name}: {gate.status} ({gate.value:.4g})")
    print(f"version {result.version}, challenger {result.challenger}")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="HF model folder (default: a tiny Llama built in a temp dir)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cycle", action="store_true", help="time one full round instead (needs --model)")
    parser.add_argument("--algorithm", default="auto", help="--cycle: the round's algorithm (auto, dpo, kto, orpo, "
                                                            "rloo, grpo)")
    parser.add_argument("--max-steps", type=int, default=-1, help="--cycle: cap on the policy's optimizer steps")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig().learning_rate,
                        help="--cycle: the policy's learning rate")
    args = parser.parse_args()
    if args.cycle:
        cycle_config = TrainConfig(algorithm=args.algorithm, max_steps=args.max_steps, learning_rate=args.learning_rate)
        with tempfile.TemporaryDirectory() as tmp:
            full_cycle(args.model or build_tiny_model(Path(tmp) / "tiny"), args.pairs, Path(tmp), cycle_config)
        return
    config = TrainConfig(epochs=1, batch_size=args.batch_size, max_length=args.max_length, learning_rate=1e-4)
    pairs = make_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_tiny_model(Path(tmp) / "tiny")
        sides = {"bare TRL DPOTrainer": bare_trl, "Flywheel policy step": flywheel}
        best: dict[str, float] = {}
        for run in range(args.repeats):
            for name, side in sides.items():
                seconds = side(model_dir, pairs, config, Path(tmp) / f"{name}-{run}".replace(" ", "_"))
                best[name] = min(best.get(name, float("inf")), seconds)
                print(f"  run {run + 1} {name}: {seconds:.1f} s")
    rates = {name: len(pairs) / seconds for name, seconds in best.items()}
    print(
        f"model: {args.model or 'tiny 2-layer Llama'}; {len(pairs)} pairs, batch {args.batch_size}, "
        f"max_length {args.max_length}, LoRA r={config.lora_r}, best of {args.repeats}"
    )
    for name, rate in rates.items():
        print(f"{name:>22}: {rate:6.2f} pairs/s")
    ratio = rates["Flywheel policy step"] / rates["bare TRL DPOTrainer"]
    print(f"{'ratio':>22}: {ratio:6.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
