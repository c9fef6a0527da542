"""The ``seed`` and ``m0`` stages of a run on the synthetic task world (``data.source="synthetic"``).

``build_seed(run)`` writes, under ``<workdir>/seed``:

  tokenizer.model          SentencePiece BPE (``config.model.vocab_size`` pieces) trained on the
                           world's ``tokenizer_corpus`` plus the judge and self-instruction templates
  ift.jsonl                IFT: train-split prompts with the canonical correct response
  eft_groups_train.jsonl   EFT groups from the world's ``eft`` split: several oracle-scored responses
  eft_groups_eval.jsonl    per prompt with ``ranks`` (0 = best, ties share) from the oracle, split
                           by ``config.data.eft_eval_fraction``; extra fields (``oracle_scores``,
                           ``family``, ``task``) are for evaluation only, the loop ignores them
  eval_tasks.jsonl         held-out instruction-following prompts (``eval`` split, serialised tasks)
  world.json               the resolved ``SyntheticConfig`` (evaluation rebuilds the world from it)

``build_m0(run)``: M0 is a tiny Llama (``config.model``) initialised at random and pretrained with
the full-sequence LM loss (``synthetic.pretrain.train_lm``) on ``pretraining_documents``:

* worked tasks in the chat format, correct with probability ``p_correct`` and plausibly wrong
  otherwise (so M0 knows the format and the vocabulary, not reliably the skills);
* judgements in the format of the run's judge template (``config.loop.judge_template``): the judge
  input, then a short justification (the correct answer, the reply's answer, the rubric verdict) and
  ``Score: <points>``, with the oracle's points with probability ``p_judge_correct`` and other points
  otherwise (so M0 can write a parsable, roughly informative judgement, the way a pretrained LLM
  can, and the SFT baseline has something to write EFT targets with);
* few-shot task lists in the self-instruction format (``config.loop.self_instruct_template`` and
  its example template) continued by one more task, so M0 can also write new prompts after
  ``"Task:"``;
* generic lines (words, numbers, alphabet).

Pretraining is a cached stage of the run, not a separate artifact: it runs inside the ``m0``
stage with its checkpoints in ``<workdir>/train/m0`` (a kill -9 resumes from the newest one; the
corpus is rebuilt deterministically and its fingerprint checked), and the finished M0 is
``<workdir>/models/M0`` like any other model of the run. The seed data come from the oracle (the
analogue of OASST's human labels); the self-rewarding loop itself never sees the oracle.

Options live in ``config.synthetic`` (a dict; see ``SyntheticConfig``); unknown or mistyped keys
raise ``ConfigError`` naming ``config.synthetic.<key>``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from selfreward_jax.configlib import ConfigError, from_config, to_config
from selfreward_jax.data.jsonl import read_json, write_json, write_jsonl
from selfreward_jax.selfreward import judge as judge_lib
from selfreward_jax.selfreward import self_instruct as si
from selfreward_jax.selfreward.templates import Template, load_template
from selfreward_jax.synthetic.corpus import (eft_candidates, ift_examples, pretraining_examples,
                                             prompt_id, tokenizer_corpus)
from selfreward_jax.synthetic.families import FAMILIES
from selfreward_jax.synthetic.judging import candidate_responses, rubric_points
from selfreward_jax.synthetic.pretrain import LMDocument, train_lm
from selfreward_jax.synthetic.tasks import Task
from selfreward_jax.synthetic.world import TaskWorld, derive_seed
from selfreward_jax.train.config import SFTConfig, TrainConfig
from selfreward_jax.train.optim import OptimConfig

log = logging.getLogger(__name__)

DEFAULT_FAMILIES: Tuple[str, ...] = ("add", "subtract", "extreme", "sort", "repeat", "uppercase",
                                     "count_items", "pair_sum", "factor", "word_pick")
"""The family mix recommended for the tiny default model (difficulty 1)."""

WORLD_FILE = "world.json"
EVAL_TASKS_FILE = "eval_tasks.jsonl"


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """M0's pretraining corpus and trainer.

  documents: corpus size (documents; repeats of a task are possible).
  p_correct: share of worked-task documents with the correct answer (the rest: plausible misses).
  p_generic: share of generic text lines.
  judge_share: share of judgement documents.
  p_judge_correct: share of judgement documents with the oracle's points (the rest: other points).
  task_list_share: share of few-shot task lists (self-instruction format).
  train, optim: the trainer (packed rows of ``train.max_len`` tokens; full LM loss).
  """

  documents: int = 24000
  p_correct: float = 0.5
  p_generic: float = 0.05
  judge_share: float = 0.25
  p_judge_correct: float = 0.9
  task_list_share: float = 0.08
  train: TrainConfig = TrainConfig(batch_size=16, max_len=256, num_steps=150, dropout_rate=0.0,
                                   save_every=100, max_to_keep=2, tensorboard=False)
  optim: OptimConfig = OptimConfig(learning_rate=3e-3, end_learning_rate=3e-4, schedule="cosine",
                                   warmup_steps=30, weight_decay=0.0)

  def __post_init__(self):
    for name in ("p_correct", "p_generic", "judge_share", "p_judge_correct", "task_list_share"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
    if self.p_generic + self.judge_share + self.task_list_share > 1.0:
      raise ValueError("p_generic + judge_share + task_list_share must be <= 1 (the rest are "
                       "worked tasks)")
    if self.documents < 1:
      raise ValueError(f"documents={self.documents} must be >= 1")

  def sft_config(self) -> SFTConfig:
    return SFTConfig(train=self.train, optim=self.optim, pack=True)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """The synthetic world of a run (``config.synthetic``).

  families: task families (names in ``synthetic.FAMILIES``), uniform mix.
  difficulty: 1, 2 or 3.
  n_ift: IFT seed examples (train split).
  n_eft: EFT prompts (eft split), split into train / eval groups by
    ``config.data.eft_eval_fraction``.
  eft_responses: oracle-ranked responses per EFT prompt.
  n_eval: held-out instruction-following prompts (eval split).
  tokenizer_tasks: worked tasks in the tokenizer's training text.
  pretrain: M0's pretraining (``PretrainConfig``).
  """

  families: Tuple[str, ...] = DEFAULT_FAMILIES
  difficulty: int = 1
  n_ift: int = 1000
  n_eft: int = 300
  eft_responses: int = 4
  n_eval: int = 300
  tokenizer_tasks: int = 2000
  pretrain: PretrainConfig = PretrainConfig()

  def __post_init__(self):
    unknown = [f for f in self.families if f not in FAMILIES]
    if unknown or not self.families:
      raise ValueError(f"families={list(self.families)}: unknown {unknown}; known: {sorted(FAMILIES)}")
    if self.difficulty not in (1, 2, 3):
      raise ValueError(f"difficulty={self.difficulty} must be 1, 2 or 3")
    for name in ("n_ift", "n_eft", "n_eval", "tokenizer_tasks"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    if self.eft_responses < 2:
      raise ValueError(f"eft_responses={self.eft_responses}: a ranked group needs at least 2")

  def world(self, seed: int) -> TaskWorld:
    return TaskWorld(seed, list(self.families), self.difficulty)


def synthetic_config(section: Any) -> SyntheticConfig:
  """``SyntheticConfig`` from ``config.synthetic`` (None/dict/ConfigDict); errors name the key."""
  if section is None:
    return SyntheticConfig()
  if isinstance(section, SyntheticConfig):
    return section
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  return from_config(SyntheticConfig, _merge(to_config(SyntheticConfig()), d), "config.synthetic")


def _merge(base: Any, over: Any) -> Any:
  """``over`` on top of ``base`` (nested dicts merged key by key; unknown keys kept for the
  key-naming error of ``from_config``)."""
  if isinstance(base, dict) and isinstance(over, Mapping):
    out = dict(base)
    for k, v in over.items():
      out[k] = _merge(base.get(k), v) if k in base else v
    return out
  return over


# ---- judgements written for pretraining ---------------------------------------------------------

def judgement_text(task: Task, response: str, points: int) -> str:
  """A short justification ending with ``Score: <points>``: a correct answer first (so a model
  writing it works the task before grading), then the answer the reply gives, e.g.
  ``"A correct answer is 3. The reply says 4. Score: 3"``."""
  grade = task.grade(response)
  if grade.answer is None:
    said = "The reply gives no answer."
  else:
    answer = grade.answer if len(grade.answer) <= 40 else grade.answer[:37] + "..."
    said = f"The reply says {answer}."
  return f"A correct answer is {task.reference}. {said} Score: {points}"


def _judge_docs(world: TaskWorld, n: int, p_right: float, template: Template, seed: int
                ) -> List[LMDocument]:
  rng = random.Random(derive_seed("pretrain-judge", world.seed, seed))
  tasks = world.stream("train", ("pretrain-judge", seed))
  out = []
  for _ in range(n):
    task = next(tasks)
    response, score = rng.choice(candidate_responses(task, rng, 4))
    points = rubric_points(score)
    right = rng.random() < p_right
    if not right:
      points = rng.choice([p for p in range(6) if p != points])
    out.append(LMDocument("judge" if right else "judge_wrong",
                          prompt=judge_lib.judge_prompt(template, task.prompt, response),
                          response=judgement_text(task, response, points)))
  return out


def _task_list_docs(world: TaskWorld, n: int, template: Template, example: Template, seed: int
                    ) -> List[LMDocument]:
  import numpy as np
  pool = [t.prompt for t in world.sample(max(64, min(2000, 4 * n)), "train",
                                         stream=("pretrain-lists", seed), unique=True,
                                         max_tries=10**6)]
  rng = np.random.default_rng(derive_seed("pretrain-lists", world.seed, seed) % 2**63)
  out = []
  for _ in range(n):
    head = si.few_shot_prompt(template, example, pool, [], rng)
    new = pool[int(rng.integers(len(pool)))]
    out.append(LMDocument("task_list", text=f"{head} {new}"))
  return out


def pretraining_documents(world: TaskWorld, cfg: PretrainConfig, judge_template: Template,
                          si_template: Template, si_example: Template, seed: int = 0
                          ) -> List[LMDocument]:
  """M0's corpus (see the module docstring), deterministic in ``(world.seed, seed)``, shuffled."""
  n = cfg.documents
  n_judge = round(cfg.judge_share * n)
  n_lists = round(cfg.task_list_share * n)
  n_rest = n - n_judge - n_lists
  p_generic = cfg.p_generic * n / n_rest if n_rest else 0.0
  docs: List[LMDocument] = []
  for e in pretraining_examples(world, n_rest, seed=seed, p_correct=cfg.p_correct,
                                p_generic=min(1.0, p_generic)):
    if e["task"] is None:
      docs.append(LMDocument("generic", text=e["text"]))
    else:
      task = Task.from_dict(e["task"])
      response = e["text"].split("[/INST]", 1)[1].strip()
      docs.append(LMDocument(e["kind"], prompt=task.prompt, response=response))
  docs += _judge_docs(world, n_judge, cfg.p_judge_correct, judge_template, seed)
  docs += _task_list_docs(world, n_lists, si_template, si_example, seed)
  random.Random(derive_seed("pretrain-order", world.seed, seed)).shuffle(docs)
  return docs


# ---- stages ---------------------------------------------------------------------------------------

def _templates(run) -> Tuple[Template, Template, Template]:
  lc = run.cfg.loop
  return (load_template(lc.judge_template, kind="judge"),
          load_template(lc.self_instruct_template, kind="self_instruct"),
          load_template(lc.self_instruct_example_template, kind="self_instruct_example"))


def _split_groups(groups: List[Dict], fraction: float, seed: int):
  from selfreward_jax.selfreward.seed_data import _split_groups as split
  return split(groups, fraction, seed)


TEMPLATE_REPEATS = 200
"""Rendered judge and self-instruction prompts added to the tokenizer's text (each rendering is a
few lines), so their fixed words become single pieces."""


def _template_lines(world: TaskWorld, judge_t: Template, si_t: Template, si_ex: Template, n: int,
                    seed: int) -> List[str]:
  docs = _judge_docs(world, n, 1.0, judge_t, seed) + _task_list_docs(world, n, si_t, si_ex, seed)
  texts = [t for d in docs for t in ((d.text,) if d.text is not None else (d.prompt, d.response))]
  return [ln.strip() for t in texts for ln in t.splitlines() if ln.strip()]


def build_seed(run) -> Dict[str, Any]:
  """Writes the seed artifacts of the synthetic world (see the module docstring); returns stats."""
  from selfreward_jax.tokenizer import train_sentencepiece
  syn = synthetic_config(run.cfg.synthetic)
  world = syn.world(run.cfg.seed)
  seed_dir = run.path("seed")
  os.makedirs(seed_dir, exist_ok=True)
  judge_t, si_t, si_ex = _templates(run)
  extra = [judge_t.text, si_t.text, si_ex.text,
           *(f"A correct answer is 5. The reply says 4. Score: {i}" for i in range(6))]
  lines = tokenizer_corpus(world, syn.tokenizer_tasks, seed=run.cfg.seed, extra_texts=extra)
  # the run reads and writes the templates' text all the time: weight them like frequent text
  lines += _template_lines(world, judge_t, si_t, si_ex, TEMPLATE_REPEATS, run.cfg.seed)
  train_sentencepiece(lines, os.path.join(seed_dir, "tokenizer"), vocab_size=run.cfg.model.vocab_size)
  ift = ift_examples(world, syn.n_ift, seed=run.cfg.seed)
  groups = eft_candidates(world, syn.n_eft, syn.eft_responses, seed=run.cfg.seed)
  train, evals = _split_groups(groups, run.cfg.data.eft_eval_fraction, run.cfg.seed)
  eval_tasks = world.sample(syn.n_eval, "eval", stream=("eval", run.cfg.seed))
  write_jsonl(os.path.join(seed_dir, "ift.jsonl"), ift)
  write_jsonl(os.path.join(seed_dir, "eft_groups_train.jsonl"), train)
  write_jsonl(os.path.join(seed_dir, "eft_groups_eval.jsonl"), evals)
  write_jsonl(os.path.join(seed_dir, EVAL_TASKS_FILE),
              [{"prompt_id": prompt_id("eval", t.prompt), "prompt": t.prompt, "family": t.family,
                "task": t.to_dict()} for t in eval_tasks])
  write_json(os.path.join(seed_dir, WORLD_FILE), {"seed": run.cfg.seed, **to_config(syn)})
  return {"ift": len(ift), "eft_train_groups": len(train), "eft_eval_groups": len(evals),
          "eval_tasks": len(eval_tasks), "families": list(syn.families),
          "difficulty": syn.difficulty, "tokenizer_lines": len(lines)}


def build_m0(run) -> Dict[str, Any]:
  """Random init + pretraining on ``pretraining_documents`` -> ``models/M0`` (resumable)."""
  import jax
  from selfreward_jax import sharding as shd
  from selfreward_jax.selfreward.loop import pause_point, stage_seed
  syn = synthetic_config(run.cfg.synthetic)
  world = syn.world(run.cfg.seed)
  judge_t, si_t, si_ex = _templates(run)
  docs = pretraining_documents(world, syn.pretrain, judge_t, si_t, si_ex, seed=run.cfg.seed)
  workdir = run.path("train", "m0")
  os.makedirs(workdir, exist_ok=True)
  corpus_path = os.path.join(workdir, "corpus.jsonl")
  if not os.path.exists(corpus_path):
    write_jsonl(corpus_path, [d.to_dict() for d in docs])
  params = shd.init_sharded_params(run.cfg.model, jax.random.key(run.cfg.seed), run.mesh)
  pt = syn.pretrain.sft_config()
  pt = pt.replace(train=pt.train.replace(seed=stage_seed(run.cfg.seed, "m0")))
  params = train_lm(run.cfg.model, params, run.tokenizer(), docs, pt, workdir, run.mesh,
                    on_step=lambda step, m: pause_point("m0", step))
  run.save("M0", run.cfg.model, params)
  kinds = collections.Counter(d.kind for d in docs)
  return {"source": "pretrained", "params": run.cfg.model.num_params(),
          "documents": dict(sorted(kinds.items())), **run._train_summary("m0")}


def load_world(run_or_workdir) -> Tuple[TaskWorld, SyntheticConfig]:
  """The world a run's seed stage used (from ``seed/world.json``)."""
  workdir = getattr(run_or_workdir, "workdir", run_or_workdir)
  d = dict(read_json(os.path.join(workdir, "seed", WORLD_FILE)))
  seed = d.pop("seed")
  syn = synthetic_config(d)
  return syn.world(seed), syn
