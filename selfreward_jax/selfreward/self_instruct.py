"""Self-instruction creation: few-shot prompts for new tasks and Self-Instruct's filters.

The few-shot prompt (PAPER.md) holds 8 demonstrations: 6 sampled from the IFT seed prompts and 2
from prompts generated earlier (IFT prompts fill in while fewer than 2 exist). The model continues
after "Task:"; the new prompt is the text up to the first blank line or the next "Task:".

Filters, applied in this order, each counted (Self-Instruct, Wang et al. 2023):
  empty        nothing usable was generated
  special      the text contains chat control tags ([INST], <<SYS>>, <s>) that would corrupt the
               chat template
  length       fewer than ``min_words`` or more than ``max_words`` words
  banned       contains a banned keyword (tasks a text-only model cannot do: images, files, ...)
  duplicate    identical to an existing prompt after lowercasing and dropping punctuation
  similar      ROUGE-L F1 >= ``rouge_threshold`` (0.7) against any existing prompt (seed prompts
               and every prompt accepted so far)
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from selfreward_jax.selfreward.templates import Template

# Self-Instruct's list (Wang et al. 2023, generate_instances filter), for a text-only model.
DEFAULT_BANNED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                  "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart",
                  "diagram")
_SPECIAL = re.compile(r"\[/?INST\]|<</?SYS>>|</?s>")
_WORD = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> List[str]:
  """ROUGE's default tokenisation: lowercase, split on anything that is not a letter or digit."""
  return _WORD.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
  """Length of the longest common subsequence (Hyyrö's bit-parallel algorithm, O(|a||b|/w))."""
  if not a or not b:
    return 0
  if len(a) < len(b):
    a, b = b, a
  masks: Dict = {}
  for i, tok in enumerate(a):
    masks[tok] = masks.get(tok, 0) | (1 << i)
  full = (1 << len(a)) - 1
  v = full
  for tok in b:
    u = v & masks.get(tok, 0)
    v = ((v + u) | (v - u)) & full
  return len(a) - bin(v).count("1")


def rouge_l(a: Sequence, b: Sequence) -> float:
  """ROUGE-L F1 between two token sequences: 2 LCS / (|a| + |b|)."""
  if not a or not b:
    return 0.0
  return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def extract_prompt(generation: str) -> str:
  """The new task from a continuation of the few-shot prompt: text up to the next "Task:" or
  blank line, stripped; a leading "Task:" the model repeated is removed."""
  text = generation.replace("\r\n", "\n")
  text = re.sub(r"^\s*Task:\s*", "", text)
  text = re.split(r"\n\s*Task:|\n\s*\n|\nTask\b", text, maxsplit=1)[0]
  return text.strip()


def few_shot_prompt(template: Template, example_template: Template, seed_prompts: Sequence[str],
                    generated_prompts: Sequence[str], rng: np.random.Generator,
                    n_seed: int = 6, n_generated: int = 2) -> str:
  """The 8-shot self-instruction prompt: ``n_seed`` seed + ``n_generated`` generated examples
  (seed examples fill in for missing generated ones), in a random order."""
  k_gen = min(n_generated, len(generated_prompts))
  k_seed = min(n_seed + n_generated - k_gen, len(seed_prompts))
  picks = [seed_prompts[i] for i in rng.choice(len(seed_prompts), k_seed, replace=False)]
  if k_gen:
    picks += [generated_prompts[i] for i in rng.choice(len(generated_prompts), k_gen, replace=False)]
  order = rng.permutation(len(picks))
  examples = "\n".join(example_template.render(prompt=" ".join(picks[i].split())) for i in order)
  return template.render(examples=examples)


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  min_words: int = 3
  max_words: int = 150
  rouge_threshold: float = 0.7
  banned_keywords: Tuple[str, ...] = DEFAULT_BANNED


class PromptFilter:
  """Stateful filter: ``add(text)`` accepts a prompt (and remembers it) or rejects it with a reason.

  ROUGE-L against thousands of existing prompts is pruned exactly: the multiset token overlap
  bounds the LCS, so only prompts whose bound reaches the threshold get the exact LCS.
  """

  REASONS = ("empty", "special", "length", "banned", "duplicate", "similar")

  def __init__(self, existing: Iterable[str], config: FilterConfig = FilterConfig()):
    self.config = config
    self.counts = collections.Counter({r: 0 for r in self.REASONS + ("accepted",)})
    self._norm: set = set()
    self._tokens: List[List[str]] = []
    self._lens: List[int] = []
    self._postings: Dict[str, List[Tuple[int, int]]] = collections.defaultdict(list)
    self._banned = [re.compile(r"(?<![a-z])" + re.escape(k.lower()) + r"(?![a-z])")
                    for k in config.banned_keywords]
    for text in existing:
      self._remember(text)

  @staticmethod
  def _normalise(text: str) -> str:
    return " ".join(rouge_tokens(text))

  def _remember(self, text: str) -> None:
    toks = rouge_tokens(text)
    pid = len(self._tokens)
    self._norm.add(self._normalise(text))
    self._tokens.append(toks)
    self._lens.append(len(toks))
    for tok, c in collections.Counter(toks).items():
      self._postings[tok].append((pid, c))

  def _max_similarity(self, toks: List[str]) -> float:
    if not toks or not self._tokens:
      return 0.0
    overlap = np.zeros(len(self._tokens), np.int32)
    for tok, c in collections.Counter(toks).items():
      post = self._postings.get(tok)
      if post:
        arr = np.asarray(post, np.int32)
        overlap[arr[:, 0]] += np.minimum(arr[:, 1], c)
    lens = np.asarray(self._lens, np.int32)
    bound = 2.0 * overlap / np.maximum(len(toks) + lens, 1)
    best = 0.0
    for pid in np.nonzero(bound >= min(self.config.rouge_threshold, 1.0))[0]:
      best = max(best, rouge_l(toks, self._tokens[pid]))
      if best >= self.config.rouge_threshold:
        break
    return best

  def check(self, text: str) -> str:
    """The first failing filter's name, or "accepted" (does not remember the prompt)."""
    c = self.config
    if not text or not text.strip():
      return "empty"
    if _SPECIAL.search(text):
      return "special"
    n_words = len(text.split())
    if n_words < c.min_words or n_words > c.max_words:
      return "length"
    low = text.lower()
    if any(p.search(low) for p in self._banned):
      return "banned"
    if self._normalise(text) in self._norm:
      return "duplicate"
    if self._max_similarity(rouge_tokens(text)) >= c.rouge_threshold:
      return "similar"
    return "accepted"

  def add(self, text: str) -> Tuple[bool, str]:
    reason = self.check(text)
    self.counts[reason] += 1
    if reason == "accepted":
      self._remember(text.strip())
    return reason == "accepted", reason
