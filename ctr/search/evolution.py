"""Evolutionary search over one discrete choice per gene (OptEmbed: one width per table).

The loop knows nothing about models, MLflow or DMP: it asks ``evaluate(candidate) -> fitness`` (higher
is better; OptEmbed passes validation AUC of the supernet at those widths) and returns the best
candidate it ever evaluated. Fitness ties go to the lower ``cost`` (e.g. parameter count) when one is
given, then to the earlier candidate.

Per generation: every new candidate is evaluated once (results are cached by candidate, so nothing is
evaluated twice); the parents are the best ``top_k`` candidates evaluated **so far** (all generations);
``mutation_num`` children re-sample each gene of a copied parent with probability ``mutation_prob`` from
**all** choices (the smallest included); ``crossover_num`` children take genes ``[0, p)`` from one parent
and ``[p, n)`` from another, with the cut ``p`` drawn in ``1 … n−1`` (genes, not widths). Candidates are
immutable tuples, so the recorded best-ever is exactly the evaluated one (the reference code aliased it
to a tensor that later mutations edited in place, and drew the cut in ``1 … D``).

Example::

    >>> res = evolve(lambda c: -abs(c[0] - 3) - abs(c[1] - 5), num_genes=2, choices=range(1, 9),
    ...              generations=15, population=12, mutation_num=6, crossover_num=6, top_k=4, seed=0)
    >>> res.best, res.fitness
    ((3, 5), 0)
"""

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

Candidate = tuple[int, ...]


@dataclass
class EvolutionResult:
    """The best candidate ever evaluated, its fitness, and one record per generation."""

    best: Candidate
    fitness: float
    history: list[dict] = field(default_factory=list)
    evaluated: int = 0


def mutate(parent: Sequence[int], choices: Sequence[int], prob: float, rng: random.Random) -> Candidate:
    """A new candidate: each gene of ``parent`` re-drawn from ``choices`` with probability ``prob``."""
    return tuple(rng.choice(choices) if rng.random() < prob else g for g in parent)


def crossover(a: Sequence[int], b: Sequence[int], rng: random.Random) -> Candidate:
    """One-point crossover with the cut ``p ∈ [1, n−1]`` over genes: ``a[:p] + b[p:]`` (a copy of ``a`` if n = 1)."""
    n = len(a)
    if n < 2:
        return tuple(a)
    p = rng.randint(1, n - 1)
    return tuple(a[:p]) + tuple(b[p:])


def evolve(evaluate: Callable[[Candidate], float], num_genes: int, choices: Iterable[int], generations: int,
           population: int, mutation_num: int, crossover_num: int, top_k: int, mutation_prob: float = 0.1,
           seed: int = 0, cost: Callable[[Candidate], float] | None = None,
           on_generation: Callable[[dict], None] | None = None) -> EvolutionResult:
    """Evolve ``generations`` generations from ``population`` random candidates.

    Args:
        evaluate: candidate → fitness (higher is better).
        num_genes: genes per candidate.
        choices: the allowed values of every gene.
        generations: generations T (each evaluates its new candidates, then breeds the next ones).
        population: size of the random initial population.
        mutation_num / crossover_num: children bred per generation.
        top_k: parents come from the best ``top_k`` candidates evaluated so far.
        mutation_prob: per-gene re-sampling probability.
        seed: seed of the search's own ``random.Random``.
        cost: tie-break (lower wins among equal fitness).
        on_generation: receives each generation's record.
    """
    choices = sorted(set(choices))
    if not choices or num_genes < 1:
        raise ValueError("evolve needs at least one gene and one choice")
    rng = random.Random(seed)
    cost = cost or (lambda c: 0.0)
    scores: dict[Candidate, float] = {}
    order: dict[Candidate, int] = {}

    def rank(c: Candidate) -> tuple:
        return (-scores[c], cost(c), order[c])

    pending = [tuple(rng.choice(choices) for _ in range(num_genes)) for _ in range(max(population, 1))]
    best: Candidate | None = None
    history = []
    for gen in range(generations):
        new = [c for c in dict.fromkeys(pending) if c not in scores]
        for c in new:
            scores[c] = float(evaluate(c))
            order[c] = len(order)
        ranked = sorted(scores, key=rank)
        if best is None or rank(ranked[0]) < rank(best):
            best = ranked[0]
        record = {"generation": gen, "evaluated": len(new), "best_fitness": scores[best],
                  "generation_best": max((scores[c] for c in new), default=float("nan")), "best": list(best)}
        history.append(record)
        if on_generation is not None:
            on_generation(record)
        parents = ranked[:top_k]
        pending = _breed(parents, choices, mutation_num, crossover_num, mutation_prob, rng, scores)
    assert best is not None
    return EvolutionResult(best, scores[best], history, len(scores))


def _breed(parents: list[Candidate], choices: list[int], mutation_num: int, crossover_num: int, prob: float,
           rng: random.Random, seen: dict, tries: int = 10) -> list[Candidate]:
    """Children not evaluated before where ``tries`` draws allow it (a repeat costs nothing: it is cached)."""
    out: list[Candidate] = []
    for _ in range(mutation_num):
        child = parents[0]
        for _ in range(tries):
            child = mutate(rng.choice(parents), choices, prob, rng)
            if child not in seen and child not in out:
                break
        out.append(child)
    for _ in range(crossover_num if len(parents) > 1 else 0):
        child = parents[0]
        for _ in range(tries):
            a, b = rng.sample(parents, 2)
            child = crossover(a, b, rng)
            if child not in seen and child not in out:
                break
        out.append(child)
    return out
