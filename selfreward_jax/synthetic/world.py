"""``TaskWorld``: deterministic task sampling with disjoint splits.

Splits are assigned by a stable hash of the task's *key* (family + params, without the phrasing),
independent of the world's seed: a problem lives in exactly one split under every phrasing and every
seed, so no prompt (and no problem in another wording) appears in two splits, and a model trained on
one seed's ``train`` never sees any seed's ``eval`` problems. The seed fixes *which* tasks are
drawn: ``TaskWorld(seed).sample(n, "eval")`` is the same list on every run and machine.

Default splits (``DEFAULT_SPLITS``), by hash share:

* ``train`` 70%: pretraining corpus and IFT seed data;
* ``eft``   10%: EFT seed data (judge training), so IFT and EFT prompts never overlap;
* ``dev``    5%: checkpoint selection (the paper's 253 held-out prompts);
* ``eval``  15%: held-out evaluation (instruction following, and the reward-modelling eval set).
"""

from __future__ import annotations

import random
import collections
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from selfreward_jax.synthetic.families import FAMILIES, get_family
from selfreward_jax.synthetic.tasks import Task, normalize_prompt, parse_task, stable_hash

DEFAULT_SPLITS: Tuple[Tuple[str, float], ...] = (
    ("train", 0.70), ("eft", 0.10), ("dev", 0.05), ("eval", 0.15))
"""``(split name, share)`` pairs; shares sum to 1."""

FamilySpec = Union[None, Sequence[str], Mapping[str, float]]


def derive_seed(*parts: object) -> int:
  """A 64-bit seed from any printable parts (stable across runs, platforms and hash seeds)."""
  return stable_hash("/".join(map(str, parts)))


def split_of(task: Task, splits: Sequence[Tuple[str, float]] = DEFAULT_SPLITS) -> str:
  """The split ``task`` belongs to (a function of ``task.key`` and the split shares only)."""
  u = stable_hash("split/" + task.key) / 2.0**64
  acc = 0.0
  for name, share in splits:
    acc += share
    if u < acc:
      return name
  return splits[-1][0]


class TaskWorld:
  """A seeded, deterministic source of tasks.

  ``seed``: fixes every sample; ``families``: ``None`` (all of ``FAMILIES``), a sequence of names
  (uniform mix) or ``{name: weight}``; ``difficulty``: 1 (easy, sized for the tiny default model),
  2 or 3; ``splits``: ``(name, share)`` pairs (default ``DEFAULT_SPLITS``).
  """

  def __init__(self, seed: int = 0, families: FamilySpec = None, difficulty: int = 1,
               splits: Sequence[Tuple[str, float]] = DEFAULT_SPLITS):
    if families is None:
      families = list(FAMILIES)
    weights = dict(families) if isinstance(families, Mapping) else {f: 1.0 for f in families}
    if not weights:
      raise ValueError("families is empty")
    for name, w in weights.items():
      get_family(name)
      if not w >= 0:
        raise ValueError(f"family weight for {name!r} must be >= 0, got {w}")
    if sum(weights.values()) <= 0:
      raise ValueError("family weights sum to 0")
    if difficulty not in (1, 2, 3):
      raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
    names = [n for n, _ in splits]
    if (abs(sum(s for _, s in splits) - 1.0) > 1e-9 or any(s <= 0 for _, s in splits)
        or len(set(names)) != len(names)):
      raise ValueError(f"splits need distinct names and positive shares summing to 1: {splits}")
    self.seed = int(seed)
    self.difficulty = difficulty
    self.weights: Dict[str, float] = {k: float(v) for k, v in weights.items() if v > 0}
    self.splits: Tuple[Tuple[str, float], ...] = tuple((n, float(s)) for n, s in splits)

  def __repr__(self) -> str:
    return (f"TaskWorld(seed={self.seed}, families={list(self.weights)}, "
            f"difficulty={self.difficulty})")

  @property
  def families(self) -> Tuple[str, ...]:
    return tuple(self.weights)

  @property
  def split_names(self) -> Tuple[str, ...]:
    return tuple(n for n, _ in self.splits)

  def split_of(self, task: Task) -> str:
    """The split of ``task`` under this world's split shares."""
    return split_of(task, self.splits)

  def random_task(self, rng: random.Random, family: Optional[str] = None) -> Task:
    """One task of ``family`` (or a weighted-random family) in any split."""
    if family is None:
      names = list(self.weights)
      family = rng.choices(names, weights=[self.weights[n] for n in names])[0]
    fam = get_family(family)
    template = rng.randrange(len(fam.templates))
    params = fam.generate(rng, self.difficulty, fam.templates[template].fixed_params)
    return Task(family, params, template)

  def stream(self, split: str = "train", stream: object = 0, *,
             family: Optional[str] = None) -> Iterator[Task]:
    """An endless, deterministic iterator of tasks in ``split`` (repeats possible), seeded by
    ``(seed, split, stream)``: different ``stream`` values give independent sequences."""
    if split not in self.split_names:
      raise ValueError(f"unknown split {split!r}; this world has {self.split_names}")
    rng = random.Random(derive_seed("world", self.seed, split, stream, family or "*"))
    misses = 0
    while True:
      task = self.random_task(rng, family)
      if self.split_of(task) == split:
        misses = 0
        yield task
      else:
        misses += 1
        if misses > 1_000_000:
          raise RuntimeError(f"no task of {family or self.families} falls in split {split!r}")

  def sample(self, n: int, split: str = "train", *, stream: object = 0, unique: bool = True,
             family: Optional[str] = None, max_tries: Optional[int] = None) -> List[Task]:
    """``n`` tasks from ``split``, deterministic in ``(seed, split, stream, family)``.

    ``unique``: no two tasks share a prompt (``ValueError`` if ``split`` runs out of distinct
    prompts within ``max_tries`` draws, default ``100 * n + 10_000``). A shorter sample is a prefix
    of a longer one with the same arguments. ``family`` restricts to one family.
    """
    if n < 0:
      raise ValueError(f"n must be >= 0, got {n}")
    out: List[Task] = []
    seen = set()
    limit = max_tries if max_tries is not None else 100 * n + 10_000
    it = self.stream(split, stream, family=family)
    tries = 0
    while len(out) < n:
      tries += 1
      if tries > limit:
        raise ValueError(f"only {len(out)} distinct prompts found in split {split!r} after {limit} "
                         f"draws (asked for {n}); use unique=False, more families or a higher "
                         "difficulty")
      task = next(it)
      if unique:
        p = task.prompt
        if p in seen:
          continue
        seen.add(p)
      out.append(task)
    return out


def prompt_validity(prompts: Iterable[str], world: Optional[TaskWorld] = None) -> Dict[str, Any]:
  """How many (self-instructed) prompts are valid tasks of the world.

  Returns ``{"n", "n_valid", "valid_fraction", "n_unique", "by_family": {family: count}}`` and, with
  a ``world``, ``"by_split": {split: count}`` (which split each valid prompt's problem belongs to:
  ``train`` means the model re-asked a training problem, ``eval`` that it wrote a held-out one) and
  ``"other_family"`` (valid tasks of families outside the world's mix).
  """
  prompts = list(prompts)
  fams: collections.Counter = collections.Counter()
  splits: collections.Counter = collections.Counter()
  other = 0
  for p in prompts:
    t = parse_task(p)
    if t is None:
      continue
    fams[t.family] += 1
    if world is not None:
      splits[world.split_of(t)] += 1
      other += t.family not in world.weights
  n_valid = sum(fams.values())
  out: Dict[str, Any] = {
      "n": len(prompts), "n_valid": n_valid,
      "valid_fraction": n_valid / len(prompts) if prompts else 0.0,
      "n_unique": len({normalize_prompt(p) for p in prompts if isinstance(p, str)}),
      "by_family": dict(sorted(fams.items()))}
  if world is not None:
    out["by_split"] = {name: splits[name] for name in world.split_names}
    out["other_family"] = other
  return out
