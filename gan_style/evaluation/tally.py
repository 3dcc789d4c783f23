"""Rank the methods of a compare report from its two-up preference votes.

Each vote says which of two outputs for the same photo a person preferred ("left", "right" or
"tie" for "can't tell"). The ranking is the Bradley-Terry model (Bradley & Terry, 1952):
method i has a strength s_i > 0 and P(i preferred to j) = s_i / (s_i + s_j). The maximum
likelihood strengths are found with the minorisation-maximisation (MM) iteration of Hunter
(2004, "MM algorithms for generalized Bradley-Terry models", Ann. Statist. 32(1), Eq. 3):

    s_i <- W_i / sum_{j != i} N_ij / (s_i + s_j)

where W_i is the number of comparisons i won and N_ij the number between i and j. A tie counts
as half a win to each side. The maximum likelihood estimate is finite only when every method
both won and lost somewhere in a connected comparison graph, which a handful of votes rarely
gives, so every pair of methods also gets one virtual tie (one comparison, half a win each):
a weak prior towards equal strengths, outweighed by a few real votes.

The 95% intervals are the 2.5 and 97.5 percentiles of the scores refitted on votes resampled
with replacement (a seeded bootstrap over votes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gan_style.errors import UserError

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie")
VOTES_FILE = "votes.jsonl"
RANKING_FILE = "ranking.json"


@dataclass(frozen=True)
class Vote:
    photo: str
    left: str
    right: str
    choice: str  # one of CHOICES
    time: str = ""
    session: str = ""
    voter: str = ""


@dataclass
class MethodRank:
    method: str
    score: float  # Bradley-Terry strength, the strengths summing to 1
    low: float  # 95% bootstrap interval of the score
    high: float
    wins: float  # ties count half
    comparisons: int


def parse_vote(record: object, methods: Sequence[str] | None = None, photos: Sequence[str] | None = None) -> Vote:
    """A vote from its JSON object; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("a vote is a JSON object")
    missing = [key for key in ("photo", "left", "right", "choice") if not isinstance(record.get(key), str)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    vote = Vote(**{key: str(record.get(key, "")) for key in Vote.__dataclass_fields__})
    if vote.choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {vote.choice!r}")
    if vote.left == vote.right:
        raise ValueError(f"left and right are both {vote.left!r}")
    if methods is not None and not {vote.left, vote.right} <= set(methods):
        raise ValueError(f"method {vote.left!r} or {vote.right!r} is not in this report")
    if photos is not None and vote.photo not in photos:
        raise ValueError(f"photo {vote.photo!r} is not in this report")
    return vote


def read_votes(paths: Iterable[Path], methods: Sequence[str], photos: Sequence[str] | None = None) -> list[Vote]:
    """The votes of every file (JSON lines), each counted once: a file downloaded from the study
    page and the server's votes.jsonl may hold the same votes. Lines that are not votes of this
    report are skipped with one warning per file."""
    votes: dict[Vote, None] = {}
    for path in paths:
        skipped: list[str] = []
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                votes.setdefault(parse_vote(json.loads(line), methods, photos))
            except ValueError as error:  # json.JSONDecodeError is one
                skipped.append(f"line {number}: {error}")
        if skipped:
            logger.warning("%s: skipped %d line(s) that are not votes of this report (%s%s)",
                           path, len(skipped), "; ".join(skipped[:3]), " ..." if len(skipped) > 3 else "")
    return list(votes)


def _outcomes(methods: Sequence[str], votes: Sequence[Vote]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left index, right index, left's share of the win) per vote."""
    index = {name: i for i, name in enumerate(methods)}
    left = np.array([index[v.left] for v in votes], dtype=np.int64)
    right = np.array([index[v.right] for v in votes], dtype=np.int64)
    share = np.array([{"left": 1.0, "right": 0.0, "tie": 0.5}[v.choice] for v in votes])
    return left, right, share


def _fit(count: int, left: np.ndarray, right: np.ndarray, share: np.ndarray, prior: float, tolerance: float = 1e-10, max_iterations: int = 10_000) -> np.ndarray:
    """Bradley-Terry strengths (summing to 1) by Hunter's MM iteration, with ``prior`` virtual
    ties between every pair."""
    wins = np.full(count, prior * (count - 1) / 2)
    np.add.at(wins, left, share)
    np.add.at(wins, right, 1.0 - share)
    pairs = np.full((count, count), prior)
    np.fill_diagonal(pairs, 0.0)
    np.add.at(pairs, (left, right), 1.0)
    np.add.at(pairs, (right, left), 1.0)
    strength = np.full(count, 1.0 / count)
    for _ in range(max_iterations):
        denominator = (pairs / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = wins / denominator
        updated /= updated.sum()  # the likelihood depends on ratios only: fix the scale
        if np.abs(updated - strength).max() < tolerance:
            return updated
        strength = updated
    return strength


def bradley_terry(methods: Sequence[str], votes: Sequence[Vote], prior: float = 1.0) -> np.ndarray:
    """The Bradley-Terry strength of each of ``methods`` (in that order, summing to 1)."""
    if len(methods) < 2:
        raise UserError("ranking needs at least two methods")
    return _fit(len(methods), *_outcomes(methods, votes), prior=prior)


def rank(methods: Sequence[str], votes: Sequence[Vote], bootstrap: int = 1000, seed: int = 0, prior: float = 1.0) -> list[MethodRank]:
    """The methods, best first, with scores, bootstrap 95% intervals and win counts."""
    left, right, share = _outcomes(methods, votes)
    scores = _fit(len(methods), left, right, share, prior)
    low, high = scores.copy(), scores.copy()
    if votes and bootstrap > 0:
        generator = np.random.default_rng(seed)
        samples = np.empty((bootstrap, len(methods)))
        for b in range(bootstrap):
            pick = generator.integers(0, len(votes), len(votes))
            samples[b] = _fit(len(methods), left[pick], right[pick], share[pick], prior)
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    wins = np.zeros(len(methods))
    np.add.at(wins, left, share)
    np.add.at(wins, right, 1.0 - share)
    comparisons = np.bincount(np.concatenate([left, right]), minlength=len(methods))
    ranking = [MethodRank(name, float(scores[i]), float(low[i]), float(high[i]), float(wins[i]), int(comparisons[i])) for i, name in enumerate(methods)]
    return sorted(ranking, key=lambda r: -r.score)


def format_ranking(ranking: Sequence[MethodRank], labels: dict[str, str] | None = None, votes: int | None = None) -> str:
    labels = labels or {}
    width = max([len(labels.get(r.method, r.method)) for r in ranking] + [6])
    lines = [f"{'rank':<5}{'method':<{width + 2}}{'score':>7}  {'95% interval':<15}{'wins':>6}{'votes':>7}"]
    for position, r in enumerate(ranking, 1):
        lines.append(f"{position:<5}{labels.get(r.method, r.method):<{width + 2}}{r.score:>7.3f}  [{r.low:.3f}, {r.high:.3f}]  {r.wins:>6g}{r.comparisons:>7d}")
    if votes is not None:
        lines.append(f"{votes} vote(s); Bradley-Terry scores sum to 1, P(A preferred to B) = score_A / (score_A + score_B)")
    return "\n".join(lines)


def ranking_record(ranking: Sequence[MethodRank], votes: int, bootstrap: int, seed: int, prior: float) -> dict:
    """What ranking.json holds (and the report's ranking section shows)."""
    return {"votes": votes, "bootstrap": bootstrap, "seed": seed, "prior_ties_per_pair": prior, "methods": [asdict(r) for r in ranking]}
