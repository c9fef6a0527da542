"""Self-instruction: few-shot prompts, extraction, and Self-Instruct's filters."""

import random

import numpy as np
import pytest

from selfreward_jax.selfreward import self_instruct as si
from selfreward_jax.selfreward.templates import load_template


def _lcs_dp(a, b):
  m = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
  for i in range(len(a)):
    for j in range(len(b)):
      m[i + 1][j + 1] = m[i][j] + 1 if a[i] == b[j] else max(m[i][j + 1], m[i + 1][j])
  return m[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
  r = random.Random(0)
  for _ in range(500):
    a = [r.randint(0, 5) for _ in range(r.randint(0, 90))]
    b = [r.randint(0, 5) for _ in range(r.randint(0, 90))]
    assert si.lcs_length(a, b) == _lcs_dp(a, b)


def test_rouge_l_values():
  a = si.rouge_tokens("The cat sat on the mat.")
  b = si.rouge_tokens("the cat is on the mat")
  assert si.rouge_l(a, b) == pytest.approx(2 * 5 / 12)
  assert si.rouge_l(a, a) == 1.0 and si.rouge_l(a, []) == 0.0


def test_filters_count_each_reason():
  f = si.PromptFilter(["Write a short poem about the sea", "Sort these numbers: 3 1 2"])
  results = [f.add(t)[1] for t in [
      "",                                            # empty
      "Tell me about [INST] tags please now",        # special
      "Hi",                                          # length
      "Draw a diagram of the water cycle",           # banned
      "write a short poem about the sea!",           # duplicate (case/punctuation)
      "Write a short poem about the blue sea",       # similar (ROUGE-L 0.93)
      "Explain how vaccines train the immune system",  # accepted
      "Explain how vaccines train the immune system quickly",  # similar to the accepted one
      "Name three prime numbers larger than fifty",  # accepted
  ]]
  assert results == ["empty", "special", "length", "banned", "duplicate", "similar", "accepted",
                     "similar", "accepted"]
  assert f.counts["accepted"] == 2 and f.counts["similar"] == 2 and sum(f.counts.values()) == 9


def test_banned_keywords_match_words_not_substrings():
  f = si.PromptFilter([])
  assert f.check("Summarise the profile of this manager") == "accepted"  # 'file' inside 'profile'
  assert f.check("Open the file and count the lines") == "banned"
  assert f.check("Please go to the store list and pick one") == "banned"


def test_pruned_similarity_equals_brute_force():
  rng = random.Random(1)
  words = "alpha beta gamma delta sort list number word count letter the a of".split()
  pool = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(300)]
  f = si.PromptFilter(pool, si.FilterConfig(rouge_threshold=0.7))
  for _ in range(200):
    cand = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
    toks = si.rouge_tokens(cand)
    brute = max(si.rouge_l(toks, si.rouge_tokens(p)) for p in pool)
    assert (f._max_similarity(toks) >= 0.7) == (brute >= 0.7)


def test_few_shot_prompt_has_six_seed_and_two_generated():
  t = load_template("self_instruct", kind="self_instruct")
  ex = load_template("self_instruct_example", kind="self_instruct_example")
  seed = [f"seed task {i}" for i in range(20)]
  gen = [f"generated task {i}" for i in range(5)]
  text = si.few_shot_prompt(t, ex, seed, gen, np.random.default_rng(0))
  lines = [l for l in text.splitlines() if l.startswith("Task: ")]
  assert len(lines) == 8
  assert sum("seed task" in l for l in lines) == 6 and sum("generated task" in l for l in lines) == 2
  assert text.endswith("Task:")
  only_seed = si.few_shot_prompt(t, ex, seed, [], np.random.default_rng(0))
  assert sum("seed task" in l for l in only_seed.splitlines()) == 8
  again = si.few_shot_prompt(t, ex, seed, gen, np.random.default_rng(0))
  assert again == text


@pytest.mark.parametrize("gen,expected", [
    (" Reverse the word 'lamp'.\nTask: something else", "Reverse the word 'lamp'."),
    ("Task: Count the vowels in 'banana'\n\nMore text", "Count the vowels in 'banana'"),
    ("   \n", ""),
    ("Add 3 and 4", "Add 3 and 4"),
])
def test_extract_prompt(gen, expected):
  assert si.extract_prompt(gen) == expected
