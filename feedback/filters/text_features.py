"""A representation of (prompt, answer) that encodes no preference, for models that learn one from votes.

The consensus filter must learn whatever the raters like from their votes, so nothing here
may be chosen to match a particular taste. The representation is the generic one of text
classification and ranking, the same for every answer:

- hashed sparse terms of the answer (scikit-learn's ``HashingVectorizer``, sublinear counts):
  its words and word bigrams, the *shape* of every token (``Paris`` -> ``Xx``, ``2.5`` ->
  ``d.d``, ``-`` -> ``-``: the word-shape feature of NER taggers, so digits, capitals and
  punctuation are seen whatever the exact token), and the shape of each line's first token
  (layout: how lines begin);
- the answer's size: its tokens, lines and characters (log), and the token count's quantile
  band among the answers being modelled (bands learnt from the data, not set here);
- how far the answer speaks to its prompt: the TF-IDF cosine of the two texts' words (IDF
  learnt from the answers being modelled) and the share of the prompt's words the answer uses,
  IDF-weighted: the query-document match features of a search ranker.

A logistic model on these can express a preference for layout, size, vocabulary, numbers or
relevance alike; which one it learns is up to the votes.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import StandardScaler, normalize

_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_SHAPE_LETTERS = str.maketrans(dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "X")
                               | dict.fromkeys("abcdefghijklmnopqrstuvwxyz", "x") | dict.fromkeys("0123456789", "d"))
_SHAPE_RUNS = re.compile(r"([Xxd])\1+")
N_FEATURES = 2**18
SIZE_BANDS = 5


@functools.lru_cache(maxsize=2**16)
def shape(token: str) -> str:
    """The token's character classes, runs collapsed: ``Paris`` -> ``Xx``, ``1.5`` -> ``d.d``, ``-`` -> ``-``.

    One translation and one pass (cached: words recur), not a regex pass per class: the first search
    over a large history shapes every token of every answer."""
    return _SHAPE_RUNS.sub(r"\1", token.translate(_SHAPE_LETTERS))


def answer_terms(text: str) -> list[str]:
    """The sparse terms of one answer, each prefixed by its kind so kinds never collide."""
    tokens = _TOKEN.findall(text)
    words = [t.lower() for t in tokens if t[0].isalnum() or t[0] == "_"]
    terms = [f"w:{w}" for w in words]
    terms += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    terms += [f"s:{shape(t)}" for t in tokens]
    for line in text.splitlines():
        first = _TOKEN.search(line)
        if first is not None:
            terms.append(f"l:{shape(first.group())}")
    return terms


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def prompt_text(messages: Sequence[Any]) -> str:
    """The text of a conversation's user turns, as stored (dicts) or as events (``ChatMessage``); the text parts of
    multi-part contents."""
    texts = []
    for message in messages:
        role, content = (message.get("role"), message.get("content")) if isinstance(message, dict) \
            else (message.role, message.content)
        if role != "user" or content is None:
            continue
        parts = [content] if isinstance(content, str) else [c.get("text", "") for c in content if isinstance(c, dict)]
        texts += [t for t in parts if isinstance(t, str)]
    return "\n".join(texts)


_TERMS = HashingVectorizer(analyzer=answer_terms, n_features=N_FEATURES, alternate_sign=False, norm=None)
_WORDS = HashingVectorizer(analyzer=words, n_features=N_FEATURES, alternate_sign=False, norm=None, binary=True)


def size(text: str) -> tuple[float, float, float]:
    """log1p of tokens, non-empty lines and characters."""
    lines = sum(1 for line in text.splitlines() if line.strip())
    return math.log1p(len(_TOKEN.findall(text))), math.log1p(lines), math.log1p(len(text))


Row = tuple[np.ndarray, np.ndarray]
"""One text's hashed row: its column indices and their values, in the vectorizer's order."""


class TextFeatures:
    """Rows of the representation for a set of answers; the per-text parts are cached (answers never change)."""

    def __init__(self) -> None:
        self._terms: dict[str, Row] = {}
        self._words: dict[str, Row] = {}
        self._size: dict[str, tuple[float, float, float]] = {}

    @staticmethod
    def _cached(cache: dict[str, Row], vectorizer: HashingVectorizer, texts: Sequence[str]) -> sp.csr_matrix:
        """``vectorizer.transform(texts)``, hashing only the texts not seen before.

        A row is cached as its column indices and values, and the matrix built from them in one
        step: a one-row sparse matrix per text, sliced out and stacked again at every search,
        cost a third of the text features' time on the first search and more on the later ones.
        """
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            rows = vectorizer.transform(missing).tocsr()
            for n, text in enumerate(missing):
                start, end = rows.indptr[n], rows.indptr[n + 1]
                cache[text] = (rows.indices[start:end], rows.data[start:end])
        parts = [cache[t] for t in texts]
        indptr = np.concatenate([[0], np.cumsum([len(indices) for indices, _ in parts], dtype=np.int64)])
        if not parts:
            return sp.csr_matrix((0, vectorizer.n_features))
        return sp.csr_matrix((np.concatenate([values for _, values in parts]),
                              np.concatenate([indices for indices, _ in parts]), indptr),
                             shape=(len(texts), vectorizer.n_features))

    def matrix(self, prompts: Sequence[str], answers: Sequence[str]) -> sp.csr_matrix:
        """One row per (prompt, answer): sparse terms (log1p counts), then the size and relevance columns."""
        terms = self._cached(self._terms, _TERMS, answers)
        terms.data = np.log1p(terms.data)
        terms = normalize(terms)  # unit length: the many sparse terms weigh as much together as one dense column
        sizes = np.array([self._size.setdefault(a, size(a)) for a in answers])
        answer_words = self._cached(self._words, _WORDS, answers)
        prompt_words = self._cached(self._words, _WORDS, prompts)
        # IDF from the answers modelled: a word most answers use says little about relevance.
        document_frequency = np.asarray((answer_words > 0).sum(axis=0)).ravel()
        idf = sp.diags(np.log((1 + len(answers)) / (1 + document_frequency)) + 1)
        a, p = answer_words @ idf, prompt_words @ idf
        overlap = np.asarray(a.multiply(p).sum(axis=1)).ravel()
        norms = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel() * np.asarray(p.multiply(p).sum(axis=1)).ravel())
        cosine = np.divide(overlap, norms, out=np.zeros_like(overlap), where=norms > 0)
        prompt_mass = np.asarray(p.sum(axis=1)).ravel()
        covered = np.asarray((p.multiply(answer_words > 0)).sum(axis=1)).ravel()
        coverage = np.divide(covered, prompt_mass, out=np.zeros_like(covered), where=prompt_mass > 0)
        dense = StandardScaler().fit_transform(np.column_stack([sizes, cosine, coverage, self._bands(sizes[:, 0])]))
        return sp.hstack([terms, sp.csr_matrix(dense)], format="csr")

    @staticmethod
    def _bands(tokens: np.ndarray) -> np.ndarray:
        """One-hot quantile band of the token count among these answers (edges learnt from them)."""
        edges = np.unique(np.quantile(tokens, np.linspace(0, 1, SIZE_BANDS + 1)[1:-1]))
        return np.eye(SIZE_BANDS)[np.searchsorted(edges, tokens, side="right")]
