"""Statistics for judged comparisons: Wilson intervals for win rates, a
Bradley-Terry fit with a bootstrap over photos, and the cost/quality Pareto front.
Pure Python, deterministic under a seed."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

Z95 = 1.959963984540054


def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The 95% Wilson score interval for `wins` out of `n` (None when n is 0)."""
    if n <= 0:
        return None
    p = wins / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# A match: (model i, model j, score of i: 1 win, 0.5 tie, 0 loss).
Match = tuple[str, str, float]


def bradley_terry(matches: Sequence[Match], models: Sequence[str], iterations: int = 500) -> dict[str, float]:
    """Strengths by the MM (Zermelo) iteration, ties as half a win each, on a log
    scale centred at 0 (a difference of 1 means e:1 odds). A small prior of one
    tie against every other model keeps the fit finite when a model wins or loses all."""
    wins = {m: 0.0 for m in models}
    games: dict[tuple[str, str], float] = {}
    for i, j, score in matches:
        wins[i] += score
        wins[j] += 1 - score
        games[(i, j)] = games.get((i, j), 0) + 1
        games[(j, i)] = games.get((j, i), 0) + 1
    for i in models:  # the prior
        for j in models:
            if i != j:
                wins[i] += 0.5 / (len(models) - 1)
                games[(i, j)] = games.get((i, j), 0) + 1 / (len(models) - 1)
    strength = {m: 1.0 for m in models}
    for _ in range(iterations):
        updated = {}
        for i in models:
            denominator = sum(games.get((i, j), 0) / (strength[i] + strength[j]) for j in models if j != i)
            updated[i] = wins[i] / denominator if denominator else strength[i]
        mean_log = sum(math.log(v) for v in updated.values()) / len(updated)
        strength = {m: v / math.exp(mean_log) for m, v in updated.items()}
    return {m: math.log(v) for m, v in strength.items()}


def bootstrap_bradley_terry(matches_by_photo: Sequence[Sequence[Match]], models: Sequence[str],
                            rounds: int = 1000, seed: int = 7) -> dict[str, tuple[float, float]]:
    """95% intervals of each model's Bradley-Terry score, resampling photos (the
    independent unit) with replacement."""
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {m: [] for m in models}
    photos = list(matches_by_photo)
    for _ in range(rounds):
        resampled = [match for _ in photos for match in rng.choice(photos)]
        for model, score in bradley_terry(resampled, models, iterations=100).items():
            samples[model].append(score)
    intervals = {}
    for model, values in samples.items():
        values.sort()
        intervals[model] = (values[int(0.025 * (rounds - 1))], values[int(0.975 * (rounds - 1))])
    return intervals


def pareto_front(points: dict[str, tuple[float | None, float]]) -> set[str]:
    """Models no other model beats on both cost (lower) and quality (higher).
    `points`: model -> (cost per 1,000 images, quality score); unpriced counts as free."""
    front = set()
    for model, (cost, quality) in points.items():
        cost = cost or 0.0
        dominated = any(
            (other_cost or 0.0) <= cost and other_quality >= quality
            and ((other_cost or 0.0) < cost or other_quality > quality)
            for other, (other_cost, other_quality) in points.items() if other != model)
        if not dominated:
            front.add(model)
    return front


def _tokens(text: str) -> list[str]:
    """Lower-case words and numbers (a plain regex tokenizer; no Java PTB tokenizer)."""
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(words: list[str], n: int) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    return counts


def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): clipped n-gram precisions for n = 1..4,
    geometric mean with add-one smoothing for n > 1, and the brevity penalty against
    the closest reference length. 0..1; only meaningful with human references."""
    matched = [0] * 4
    total = [0] * 4
    candidate_length = reference_length = 0
    for candidate, refs in zip(candidates, references):
        words = _tokens(candidate)
        ref_words = [_tokens(r) for r in refs]
        candidate_length += len(words)
        reference_length += min((len(r) for r in ref_words), key=lambda length: (abs(length - len(words)), length),
                                default=0)
        for n in range(1, 5):
            counts = _ngrams(words, n)
            best: dict[tuple[str, ...], int] = {}
            for r in ref_words:
                for gram, count in _ngrams(r, n).items():
                    best[gram] = max(best.get(gram, 0), count)
            matched[n - 1] += sum(min(count, best.get(gram, 0)) for gram, count in counts.items())
            total[n - 1] += max(0, len(words) - n + 1)
    if candidate_length == 0 or total[0] == 0 or matched[0] == 0:
        return 0.0
    log_precision = sum(math.log((matched[i] + (i > 0)) / (total[i] + (i > 0))) for i in range(4)) / 4
    brevity = 1.0 if candidate_length > reference_length else math.exp(1 - reference_length / candidate_length)
    return brevity * math.exp(log_precision)
