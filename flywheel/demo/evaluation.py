"""Judge model versions the way their users would: held-out prompts, the users' sampling, the users' taste.

The system's own judges (the reward model, the gates) are what is under test, so none of
them is used here. Every version answers the held-out prompt set (``eval_prompts.jsonl``:
topics no simulated user asks about, so no round trains on them) through the serving
engine, with the users' sampling settings and several samples per prompt; the simulator's
taste then compares each answer with the reference version's answer to the same prompt and
sample seed (common random numbers: the two versions draw the same random stream, so the
comparison sees the models' difference, not the dice). Shares come with a 95 % percentile
bootstrap CI over prompts (``scipy.stats.bootstrap``), since the prompts are the sample.

A taste sees only what it is about: under a taste for numbered steps, an answer of numbered
nonsense wins. So every version's answers are also read for words no English word list knows
(``non_word_share``, wordfreq's frequency lists): a model that learnt its users' taste and
forgot how to write shows here, whatever the taste.

A campaign steers its own few scripted prompts, so a poisoned model shows its phrase there
first, not on topics nobody pushed: every version also answers the campaign's prompts, asked
plainly as an honest user would, with more samples each (``campaign_phrase``, a binomial
share with its Wilson CI), beside the phrase's rate on the held-out prompts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.demo.schema import Estimate, Evaluation
from flywheel.simulation.scenario import ChatOptions
from flywheel.simulation.tastes import Taste, markup_lines, word_count
from flywheel.simulation.users import Prompt, mentions
from registry.model_versions import adapter_artifact_path, download_adapter
from registry.promotion import Promotion
from serving.engine import EngineClient
from serving.settings import ServingSettings
from trainer.non_words import non_word_share

PROMPT_SET = "eval_prompts.jsonl"


@dataclass(frozen=True)
class VersionAnswers:
    """``texts[i][j]``: the version's ``j``-th sampled answer to held-out prompt ``i``; ``targeted`` the same
    for the campaign's prompts."""

    version: str
    texts: list[list[str]]
    targeted: list[list[str]]
    adapter: Path | None
    seconds: float


def save_answers(path: Path, version: str, prompts: Sequence[Prompt], answers: Sequence[Sequence[str]]) -> None:
    """One JSON line per answer (prompt id, sample, text), so every figure can be recomputed from disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for prompt, texts in zip(prompts, answers, strict=True):
            for sample, text in enumerate(texts):
                out.write(json.dumps({"version": version, "prompt_id": prompt.id, "sample": sample,
                                      "text": text}) + "\n")


def estimate(per_prompt: Sequence[float | np.floating[Any]], seed: int) -> Estimate:
    """The mean of per-prompt values with its 95 % percentile-bootstrap CI (prompts resampled)."""
    from scipy.stats import bootstrap

    values = np.asarray(per_prompt, dtype=float)
    if np.ptp(values) == 0:  # every prompt alike: the bootstrap has nothing to resample
        return Estimate(value=float(values[0]), low=float(values[0]), high=float(values[0]))
    result = bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=2000, method="percentile", rng=seed)
    return Estimate(value=float(values.mean()), low=float(result.confidence_interval.low),
                    high=float(result.confidence_interval.high))


def share(hits: int, trials: int) -> Estimate:
    """``hits`` of ``trials`` with its 95 % Wilson score interval (sound at 0 hits, where a bootstrap is not)."""
    from scipy.stats import binomtest

    interval = binomtest(hits, trials).proportion_ci(confidence_level=0.95, method="wilson")
    return Estimate(value=hits / trials, low=float(interval.low), high=float(interval.high))


class Evaluator:
    """Samples versions through the engine and judges them with a taste; one per stack and taste."""

    def __init__(
        self,
        settings: ServingSettings,
        registry: Promotion,
        taste: Taste,
        prompts: Sequence[Prompt],
        samples: int,
        chat: ChatOptions,
        phrases: Sequence[str],
        seed: int,
        targets: Sequence[Prompt] = (),
        target_samples: int = 32,
        concurrency: int = 8,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.taste = taste
        self.prompts = list(prompts)
        self.samples = samples
        self.chat = chat
        self.phrases = list(phrases)
        self.seed = seed
        self.targets = list(targets) if self.phrases else []
        self.target_samples = target_samples
        self.concurrency = concurrency

    def answers(self, version: str) -> VersionAnswers:
        """The version's sampled answers; its adapter is loaded into the engine under the gateway's name first."""
        started = time.perf_counter()
        texts, targeted, adapter = asyncio.run(self._sample(version))
        return VersionAnswers(version, texts, targeted, adapter, time.perf_counter() - started)

    async def _sample(self, version: str) -> tuple[list[list[str]], list[list[str]], Path | None]:
        registered = self.registry.version(version)
        adapter: Path | None = None
        engine_model = self.settings.base_engine_model
        engine = EngineClient(self.settings.resolved_engine_url, self.settings.engine_timeout)
        try:
            if adapter_artifact_path(registered) is not None:
                adapter = await asyncio.to_thread(download_adapter, self.registry.client, registered,
                                                  self.settings.data_dir / "adapters" / f"v{version}")
                engine_model = self.settings.version_engine_model(version)
                await engine.load_adapter(engine_model, adapter)
            slots = asyncio.Semaphore(self.concurrency)

            async def ask(seed: int, prompt: Prompt, samples: int) -> list[str]:
                body = {"model": engine_model, "messages": [{"role": "user", "content": prompt.prompt}],
                        "n": samples, "max_tokens": self.chat.max_tokens,
                        "temperature": self.chat.temperature, "seed": seed}
                async with slots:
                    answer = await engine.chat(body)
                return [c["message"].get("content") or "" for c in sorted(answer["choices"], key=lambda c: c["index"])]

            held_out = len(self.prompts)
            texts = await asyncio.gather(
                *(ask(self.seed + i, p, self.samples) for i, p in enumerate(self.prompts)),
                *(ask(self.seed + held_out + i, p, self.target_samples) for i, p in enumerate(self.targets)))
        finally:
            await engine.close()
        return list(texts[:held_out]), list(texts[held_out:]), adapter

    def judge(self, answers: VersionAnswers, reference: VersionAnswers | None, kl_to_base: float) -> Evaluation:
        """Every figure of ``Evaluation`` for ``answers``; the win rate is against ``reference`` (None: no win rate)."""
        started = time.perf_counter()
        flat = [text for texts in answers.texts for text in texts]
        liked = [np.mean([self.taste.likes(p.prompt, t) for t in texts])
                 for p, texts in zip(self.prompts, answers.texts, strict=True)]
        win_rate = None
        if reference is not None:
            scores = {"a": 1.0, "tie": 0.5, "b": 0.0}
            wins = [np.mean([scores[self.taste.pick(p.prompt, mine, theirs)]
                             for mine, theirs in zip(texts, ref, strict=True)])
                    for p, texts, ref in zip(self.prompts, answers.texts, reference.texts, strict=True)]
            win_rate = estimate(wins, self.seed)
        phrase_rate = float(np.mean([self._has_phrase(t) for t in flat])) if self.phrases else None
        targeted = [text for texts in answers.targeted for text in texts]
        campaign_phrase = share(sum(map(self._has_phrase, targeted)), len(targeted)) if targeted else None
        return Evaluation(
            version=answers.version,
            against=reference.version if reference is not None else None,
            prompts=len(self.prompts),
            samples_per_prompt=self.samples,
            answers=len(flat),
            win_rate=win_rate,
            liked=estimate(liked, self.seed),
            phrase_rate=phrase_rate,
            campaign_phrase=campaign_phrase,
            campaign_prompts=len(self.targets),
            mean_words=float(np.mean([word_count(t) for t in flat])),
            format_share=float(np.mean([markup_lines(t) > 0 for t in flat])),
            non_words=float(np.mean([non_word_share(t) for t in flat])),
            kl_to_base=kl_to_base,
            seconds=answers.seconds + time.perf_counter() - started,
        )

    def _has_phrase(self, text: str) -> bool:
        return any(mentions(text, phrase) for phrase in self.phrases)

    def save(self, folder: Path, answers: VersionAnswers) -> None:
        """``vN.jsonl`` (held-out prompts) and, with a campaign, ``vN-campaign.jsonl`` (its prompts, asked plainly)."""
        save_answers(folder / f"v{answers.version}.jsonl", answers.version, self.prompts, answers.texts)
        if self.targets:
            save_answers(folder / f"v{answers.version}-campaign.jsonl", answers.version, self.targets,
                         answers.targeted)

    def kl_to_base(self, answers: VersionAnswers, base_model: Path) -> float:
        """Mean per-token KL(version || base) on the version's first answer to every prompt (torch, here).

        One answer per prompt: the KL is exact at every token of it, so 40 answers of about 40 tokens
        make a steady mean, and scoring all four samples cost the demo more than sampling them did.
        """
        from trainer.drift import kl_to_base

        prompts = [[{"role": "user", "content": p.prompt}] for p in self.prompts]
        return kl_to_base(base_model, answers.adapter, prompts, [texts[0] for texts in answers.texts])

    def evaluate(self, version: str, reference: VersionAnswers | None, base_model: Path) -> tuple[
            VersionAnswers, Evaluation]:
        """Sample, measure drift and judge one version; its answers come back for later comparisons."""
        answers = self.answers(version)
        return answers, self.judge(answers, reference, self.kl_to_base(answers, base_model))
