"""Corpora and seed datasets built from a ``TaskWorld``.

* ``pretraining_corpus``: documents for pretraining M0, ``"[INST] {prompt} [/INST] {response}"``
  with correct *and* plausibly wrong answers (exact share ``p_correct``), plus a little generic text
  (the world's words, numbers, letters). M0 learns the format and the vocabulary, not reliably the
  skills. Documents hold no BOS/EOS: the trainer adds them per document (as
  ``Tokenizer.encode_chat_example`` does for chat data).
* ``tokenizer_corpus``: lines covering every template, word, number, answer and judging phrase (plus
  caller-supplied texts such as the judge template) for training the 512-piece SentencePiece model.
* ``ift_examples`` / ``eft_candidates``: the analogues of the paper's OASST seed data: IFT =
  prompt + best (correct, canonical) response; EFT candidates = several oracle-scored, oracle-ranked
  responses per prompt, from a split disjoint from IFT's.

Everything is deterministic in ``(world.seed, seed)``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterable, List, Optional

from selfreward_jax.synthetic.base import format_response
from selfreward_jax.synthetic.families import get_family
from selfreward_jax.synthetic.judging import (EXTRANEOUS, OFF_TOPIC, RUBRIC_TEXT,
                                              candidate_responses, oracle_judgement, oracle_rank)
from selfreward_jax.synthetic.tasks import Task, parse_task, stable_hash
from selfreward_jax.synthetic.words import WORDS
from selfreward_jax.synthetic.world import TaskWorld, derive_seed

B_INST, E_INST = "[INST]", "[/INST]"


def chat_text(prompt: str, response: str) -> str:
  """One document in the Llama 2 chat layout: ``"[INST] {prompt} [/INST] {response}"``."""
  return f"{B_INST} {prompt.strip()} {E_INST} {response.strip()}"


def generic_line(rng: random.Random) -> str:
  """A line of task-free text: a run of the world's words (lower or upper case), of numbers, or
  the alphabet."""
  kind = rng.randrange(5)
  if kind == 0:
    return " ".join(rng.sample(WORDS, rng.randint(6, 12)))
  if kind == 1:
    return " ".join(w.upper() for w in rng.sample(WORDS, rng.randint(4, 8)))
  if kind == 2:
    start = rng.randint(0, 90)
    return " ".join(str(i) for i in range(start, start + rng.randint(6, 12)))
  if kind == 3:
    return ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(4, 8)))
  return " ".join("abcdefghijklmnopqrstuvwxyz" if rng.random() < 0.5 else
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def pretraining_examples(world: TaskWorld, n: int, seed: int = 0, p_correct: float = 0.5,
                         p_generic: float = 0.05, near_share: float = 0.8,
                         split: str = "train") -> List[Dict[str, Any]]:
  """``n`` pretraining documents with their provenance.

  Exactly ``round(p_generic * n)`` generic lines (``kind="generic"``) and, of the remaining task
  documents, exactly ``round(p_correct * n_tasks)`` with the canonical correct response
  (``kind="correct"``); the rest carry a wrong answer in the canonical format (``kind="wrong"``: a
  near miss with probability ``near_share`` (off by one, wrong operation, partial reversal, one swap
  ...), else a far miss). Prompts come from ``split`` (repeats allowed), in random order.
  Returns dicts ``{"text", "kind", "family", "task"}`` (``family``/``task`` are ``None`` for
  generic lines; ``task`` is ``Task.to_dict()``).
  """
  if not 0.0 <= p_correct <= 1.0 or not 0.0 <= p_generic <= 1.0:
    raise ValueError(f"p_correct and p_generic must be in [0, 1], got {p_correct}, {p_generic}")
  rng = random.Random(derive_seed("pretrain", world.seed, seed))
  n_generic = round(p_generic * n)
  n_task = n - n_generic
  n_correct = round(p_correct * n_task)
  kinds = ["generic"] * n_generic + ["correct"] * n_correct + ["wrong"] * (n_task - n_correct)
  rng.shuffle(kinds)
  tasks = world.stream(split, ("pretrain", seed))
  out = []
  for kind in kinds:
    if kind == "generic":
      out.append({"text": generic_line(rng), "kind": kind, "family": None, "task": None})
      continue
    task = next(tasks)
    if kind == "correct":
      response = task.response
    else:
      near = rng.random() < near_share
      response = format_response(task.family_obj.wrong_answer(task.params, rng, near=near))
    out.append({"text": chat_text(task.prompt, response), "kind": kind, "family": task.family,
                "task": task.to_dict()})
  return out


def pretraining_corpus(world: TaskWorld, n: int, seed: int = 0, p_correct: float = 0.5,
                       p_generic: float = 0.05, near_share: float = 0.8,
                       split: str = "train") -> List[str]:
  """The texts of ``pretraining_examples`` (same arguments): ``n`` documents, one string each."""
  return [e["text"] for e in pretraining_examples(world, n, seed, p_correct, p_generic,
                                                  near_share, split)]


def tokenizer_corpus(world: TaskWorld, n: int = 2000, seed: int = 0,
                     extra_texts: Iterable[str] = ()) -> List[str]:
  """Lines for training the tokenizer, covering everything the run will write or read.

  Contains: every template of every family of ``world`` rendered several times; ``n`` worked
  train-split tasks as chat documents (correct and wrong answers, verbose and bare variants);
  the oracle judgement sentences; the word list in lower and upper case; numbers 0-999; the
  alphabet; and ``extra_texts`` (e.g. the judge prompt template and the self-instruction prompt:
  pass them here), split into lines. No line is empty or contains a newline.
  """
  rng = random.Random(derive_seed("tokenizer", world.seed, seed))
  lines: List[str] = []
  for name in world.families:
    fam = get_family(name)
    stream = world.stream("train", ("tokenizer-templates", seed), family=name)
    seen_templates: Dict[int, int] = {}
    while min((seen_templates.get(i, 0) for i in range(len(fam.templates))), default=3) < 3:
      task = next(stream)
      if seen_templates.get(task.template, 0) < 3:
        seen_templates[task.template] = seen_templates.get(task.template, 0) + 1
        lines.append(chat_text(task.prompt, task.response))
  for i, task in enumerate(world.sample(n, "train", stream=("tokenizer", seed), unique=False)):
    cands = candidate_responses(task, rng, 2)
    lines.append(chat_text(task.prompt, cands[0][0]))
    if i % 4 == 0:
      lines.append(oracle_judgement(task, cands[-1][0])[0])
  lines += list(EXTRANEOUS) + list(OFF_TOPIC) + [s.capitalize() + "." for s in RUBRIC_TEXT]
  for i in range(0, len(WORDS), 12):
    chunk = WORDS[i:i + 12]
    lines.append(" ".join(chunk))
    lines.append(" ".join(w.upper() for w in chunk))
  lines += [" ".join(str(j) for j in range(i, i + 50)) for i in range(0, 1000, 50)]
  lines += ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
  for text in extra_texts:
    lines += [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  return lines


def prompt_id(prefix: str, prompt: str) -> str:
  """A stable id for a prompt: ``f"{prefix}-{12 hex digits of its hash}"``."""
  return f"{prefix}-{stable_hash(prompt):016x}"[:len(prefix) + 13]


def ift_examples(world: TaskWorld, n: int, seed: int = 0,
                 split: str = "train") -> List[Dict[str, Any]]:
  """``n`` instruction-following seed examples (the paper's IFT: prompt + top-ranked response).

  Distinct prompts from ``split``; the response is the canonical correct one. Returns dicts
  ``{"prompt_id", "prompt", "response", "family", "task"}`` (``task``: ``Task.to_dict()``).
  """
  tasks = world.sample(n, split, stream=("ift", seed))
  return [{"prompt_id": prompt_id("ift", t.prompt), "prompt": t.prompt, "response": t.response,
           "family": t.family, "task": t.to_dict()} for t in tasks]


def eft_candidates(world: TaskWorld, n_prompts: int, n_responses: int = 4, seed: int = 0,
                   split: str = "eft") -> List[Dict[str, Any]]:
  """EFT raw material: ``n_prompts`` distinct prompts, each with ``n_responses`` oracle-graded
  responses (the analogue of OASST's human-ranked responses).

  Prompts come from ``split`` (default ``"eft"``, disjoint from the ``"train"`` split that
  ``ift_examples`` uses, so no prompt is in both; use ``"eval"`` for the reward-modelling eval set).
  Returns dicts ``{"prompt_id", "prompt", "responses", "oracle_scores", "ranks", "family",
  "task"}`` with
  ``ranks = oracle_rank(oracle_scores)`` (0 = best, ties share a rank). The judge targets
  (justification + ``Score: X``) are made downstream by the SFT baseline and filtered on agreement
  with ``ranks`` (``judging.rank_agreement``).
  """
  tasks = world.sample(n_prompts, split, stream=("eft", seed))
  rng = random.Random(derive_seed("eft-candidates", world.seed, seed, split))
  out = []
  for t in tasks:
    cands = candidate_responses(t, rng, n_responses)
    scores = [s for _, s in cands]
    out.append({"prompt_id": prompt_id("eft", t.prompt), "prompt": t.prompt,
                "responses": [r for r, _ in cands], "oracle_scores": scores,
                "ranks": oracle_rank(scores), "family": t.family, "task": t.to_dict()})
  return out


def task_of(example: Dict[str, Any]) -> Optional[Task]:
  """The ``Task`` recorded in a dataset example (its ``task`` dict), else ``parse_task`` of its
  ``prompt``, else ``None``."""
  if example.get("task"):
    return Task.from_dict(example["task"])
  return parse_task(example.get("prompt", ""))
