"""Synthetic task world: oracles on hand-written cases, partial credit, the generate/verify-gap
families accepting any valid answer, serialisation and parse_task round trips."""

import json
import random

import pytest

from selfreward_jax.synthetic import (CATEGORIES, FAMILIES, Task, TaskWorld, extract_answer,
                                      format_response, oracle_score, parse_task)
from selfreward_jax.synthetic.base import numeric_credit, string_credit


def _task(prompt):
  t = parse_task(prompt)
  assert t is not None, prompt
  return t


# ---- answer format -------------------------------------------------------------------------------


def test_answer_format_and_extraction():
  assert format_response("42") == "The answer is 42."
  assert extract_answer("The answer is 42.") == "42"
  assert extract_answer("Sure! the answer is: -3. Hope it helps.") == "-3"
  assert extract_answer("42") == "42"
  assert extract_answer("  ") is None
  assert extract_answer("The answer is .") is None


def test_credit_helpers():
  assert numeric_credit(7, 7) == 1.0 and numeric_credit(None, 7) == 0.0
  assert numeric_credit(8, 7) == numeric_credit(6, 7) == 0.75
  assert 0 < numeric_credit(20, 7) < numeric_credit(9, 7) < 0.75
  assert numeric_credit(430, 420) > numeric_credit(15, 5)  # scale grows with magnitude
  assert string_credit("elppa", "elppa") == 1.0
  assert string_credit("elpap", "elppa") == pytest.approx(0.6)
  assert string_credit(None, "x") == 0.0


# ---- oracles, hand-written -----------------------------------------------------------------------


def test_add_oracle_scores_and_format():
  t = _task("What is 3 plus 4?")
  assert (t.family, t.params, t.reference) == ("add", {"a": 3, "b": 4}, "7")
  assert t.score("The answer is 7.") == 1.0 and t.is_correct("The answer is 7.")
  assert t.score("7") == 0.9 and t.is_correct("7")                      # bare: right, not canonical
  assert t.score("The answer is 7. I hope this helps!") == 0.9          # extraneous text
  assert t.score("The answer is 8.") == pytest.approx(0.6)              # off by one, canonical
  assert 0 < t.score("8") < t.score("The answer is 8.")                 # same miss, worse format
  assert 0 < t.score("The answer is 20.") < t.score("The answer is 8.")
  for bad in ("", "banana", "The answer is seven.", "I do not know", "The answer is 7 or 8."):
    assert t.score(bad) < 0.9 and not t.is_correct(bad), bad
  assert t.score("banana") == 0.0


def test_subtract_and_multi_step():
  t = _task("Subtract 7 from 19.")
  assert t.params == {"a": 19, "b": 7} and t.reference == "12"
  m = _task("Start with 5, add 3, then subtract 2. What do you get?")
  assert m.family == "multi_step" and m.reference == "6"
  assert _task("What is 5 plus 3 minus 2?").params == m.params
  assert _task("Compute 10 - 8 + 6.").reference == "8"  # left to right
  assert m.score("The answer is 8.") < 0.8              # stopped after the first step


def test_string_oracles():
  r = _task("Reverse the word apple.")
  assert r.reference == "elppa" and r.score("The answer is elppa.") == 1.0
  assert 0 < r.score("The answer is elpap.") < 0.8      # partially reversed
  assert r.score("The answer is e l p p a.") == 0.0     # a sentence is not a word
  u = _task("Convert cat to uppercase.")
  assert u.reference == "CAT"
  assert u.score("The answer is CAt.") > u.score("The answer is cat.") > 0
  rep = _task("Repeat the word dog 3 times.")
  assert rep.reference == "dog dog dog" and rep.is_correct("The answer is dog dog dog.")
  assert rep.score("The answer is dog dog.") == pytest.approx(0.8 * 2 / 3)
  assert rep.score("The answer is dog dog dog dog.") == pytest.approx(0.8 * 3 / 4)
  v = _task("Remove the vowels from banana.")
  assert v.reference == "bnn" and v.is_correct("The answer is bnn.")
  assert 0 < v.score("The answer is bann.") < 0.8


def test_selection_oracles():
  s = _task("Sort these numbers from smallest to largest: 5, 2, 9, 1.")
  assert s.params["order"] == "asc" and s.reference == "1, 2, 5, 9"
  assert s.score("The answer is 1, 2, 9, 5.") == pytest.approx(0.8 * 0.5)  # one swap
  assert s.score("The answer is 1, 2, 5.") == pytest.approx(0.8 * 0.75)    # one dropped
  d = _task("Put 5, 2, 9 in decreasing order.")
  assert d.reference == "9, 5, 2"
  e = _task("Find the minimum of 19, 17, 9.")
  assert e.reference == "9" and e.score("The answer is 17.") > e.score("The answer is 19.") == 0
  k = _task("What is the second largest number in the list 4, 8, 1, 6?")
  assert k.params["k"] == 2 and k.reference == "6"
  assert k.score("The answer is 8.") > k.score("The answer is 1.")  # runner-up earns more
  assert k.score("The answer is 7.") == 0.0                        # not in the list


def test_counting_oracles():
  c = _task("How many times does the letter a appear in banana?")
  assert c.reference == "3" and c.score("The answer is 2.") == pytest.approx(0.6)
  i = _task("Count the words: cat, dog, sun.")
  assert i.reference == "3" and i.is_correct("3")


def test_gap_families_accept_any_valid_answer():
  p = _task("Give two numbers from the list 1, 4, 5, 8 that add up to 9.")
  for ok in ("1 and 8", "8 and 1", "4 and 5", "5, 4"):
    assert p.is_correct(f"The answer is {ok}."), ok
  assert p.score("The answer is 1 and 8.") == 1.0 and p.score("The answer is 5, 4.") == 0.9
  assert not p.is_correct("The answer is 3 and 6.")     # right sum, not from the list
  assert not p.is_correct("The answer is 4 and 4.")     # one entry used twice
  assert not p.is_correct("The answer is 1 and 8 and 4.")
  assert p.score("The answer is 4 and 8.") > p.score("The answer is 3 and 6.") > 0
  dup = parse_task("Give two numbers from the list 4, 4, 7 that add up to 8.")
  assert dup.is_correct("4 and 4")  # a repeated entry may be used once per occurrence

  f = _task("Factor 12 into two numbers greater than 1.")
  for ok in ("2 and 6", "6 and 2", "3 and 4", "4 and 3"):
    assert f.score(f"The answer is {ok}.") == 1.0, ok
  assert f.is_correct("The answer is 3 x 4.") and f.score("The answer is 3 x 4.") == 0.9
  assert not f.is_correct("The answer is 1 and 12.") and f.score("The answer is 1 and 12.") > 0
  assert f.score("The answer is 3 and 5.") > 0 and not f.is_correct("The answer is 3 and 5.")

  w = _task("Name a word from cat, cow, crab, dog that starts with c and has 3 letters.")
  assert w.is_correct("The answer is cat.") and w.is_correct("The answer is cow.")
  assert not w.is_correct("The answer is cup.")         # fits, but not in the list
  assert not w.is_correct("The answer is crab.")        # in the list, wrong length
  assert w.score("The answer is crab.") > w.score("The answer is cup.")
  assert w.score("The answer is cup.") > w.score("The answer is x.")
  assert sorted(w.oracle.valid_answers) == ["cat", "cow"]

  s = _task("Find x such that 3x + 2 = 17.")
  assert s.reference == "5" and s.is_correct("The answer is 5.")
  assert s.is_correct("The answer is x = 5.") and s.score("The answer is x = 5.") == 0.9
  assert s.score("The answer is 15.") < s.score("The answer is 6.")  # forgot to divide
  assert _task("If 2x - 4 = -10, what is x?").reference == "-3"


def test_oracle_object_matches_task():
  t = _task("Write cat 2 times.")
  o = t.oracle
  assert o.reference == "cat cat" and o.valid_answers == ["cat cat"]
  for r in ("The answer is cat cat.", "cat", ""):
    assert o.score(r) == t.score(r) and o.is_correct(r) == t.is_correct(r)
  assert oracle_score(t.prompt, "The answer is cat cat.") == 1.0
  assert oracle_score("Tell me a story.", "Once upon a time.") is None


# ---- properties over generated tasks -------------------------------------------------------------


@pytest.fixture(scope="module")
def tasks_all_difficulties():
  out = []
  for d in (1, 2, 3):
    out += TaskWorld(seed=d, difficulty=d).sample(1200, "train", unique=False)
  return out


def test_every_family_in_a_category_and_has_four_phrasings():
  assert set(CATEGORIES) == {"arithmetic", "string", "selection", "counting", "gap"}
  assert sorted(n for names in CATEGORIES.values() for n in names) == sorted(FAMILIES)
  for fam in FAMILIES.values():
    per_fixed = {}
    for tpl in fam.templates:
      per_fixed.setdefault(tpl.fixed, []).append(tpl)
    assert all(len(v) >= 4 for v in per_fixed.values()), fam.name
    assert fam.gap


def test_reference_and_misses_graded_consistently(tasks_all_difficulties):
  rng = random.Random(0)
  partial = {}
  for t in tasks_all_difficulties:
    assert t.score(t.response) == 1.0 and t.is_correct(t.reference), t
    for ans in t.oracle.valid_answers:
      assert t.score(format_response(ans)) == 1.0, (t, ans)
    for near in (True, False):
      wrong = t.family_obj.wrong_answer(t.params, rng, near=near)
      s = t.score(format_response(wrong))
      assert 0.0 <= s < 0.8 and not t.is_correct(format_response(wrong)), (t, wrong)
      if near:
        partial.setdefault(t.family, []).append(0.0 < s)
  for fam, flags in partial.items():  # near misses mostly earn partial credit
    assert sum(flags) / len(flags) >= 0.5, (fam, sum(flags) / len(flags))


def test_parse_task_round_trips_every_task(tasks_all_difficulties):
  seen_templates = set()
  for t in tasks_all_difficulties:
    assert parse_task(t.prompt) == t, t
    seen_templates.add((t.family, t.template))
  for t in tasks_all_difficulties[::5]:  # no prompt fits two templates (parsing is unambiguous)
    hits = [(f, i) for f, fam in FAMILIES.items() for i, tpl in enumerate(fam.templates)
            if tpl.compile(fam.fields).fullmatch(t.prompt)]
    assert hits == [(t.family, t.template)], (t.prompt, hits)
  every = {(f, i) for f, fam in FAMILIES.items() for i in range(len(fam.templates))}
  assert seen_templates == every
  t = tasks_all_difficulties[0]
  assert parse_task("  " + t.prompt.replace(" ", "   ") + "\n") == t  # whitespace-normalised


def test_parse_task_rejects_garbage():
  for text in ("", "hello", "What is 3 plus?", "what is 3 plus 4?", "What is 3 plus 4",
               "[INST] What is 3 plus 4? [/INST]", "What is 3 plus 4? The answer is 7.",
               "Give two numbers from the list 1, 2, 3 that add up to 100.",  # unsolvable
               "Factor 13 into two numbers greater than 1.",                 # prime
               "Find x such that 2x + 1 = 4.",                               # no integer x
               "Remove the vowels from aeiou.",                              # empty answer
               "What is the sixth smallest number in the list 1, 2, 3?",     # k > n
               "Reverse the word Apple.", None, 42):
    assert parse_task(text) is None, text


def test_serialisation_round_trip(tasks_all_difficulties):
  for t in tasks_all_difficulties[::7]:
    d = json.loads(json.dumps(t.to_dict()))
    assert Task.from_dict(d) == t and hash(Task.from_dict(d)) == hash(t)
    assert d["prompt"] == t.prompt and d["reference"] == t.reference
  d = tasks_all_difficulties[0].to_dict()
  with pytest.raises(ValueError, match="rebuilt prompt"):
    Task.from_dict(dict(d, prompt="something else"))


def test_task_construction_validates():
  with pytest.raises(ValueError, match="template"):
    Task("add", {"a": 1, "b": 2}, 99)
  with pytest.raises(ValueError, match="keys"):
    Task("add", {"a": 1}, 0)
  with pytest.raises(ValueError, match="requires"):
    Task("sort", {"xs": [3, 1], "order": "desc"}, 0)  # template 0 is ascending
  with pytest.raises(ValueError, match="invalid"):
    Task("factor", {"n": 7}, 0)
  with pytest.raises(KeyError, match="unknown task family"):
    Task("poetry", {}, 0)
  a = Task("sort", {"xs": [3, 1], "order": "asc"}, 1)
  b = Task("sort", {"xs": (3, 1), "order": "asc"}, 1)
  assert a == b and hash(a) == hash(b) and len({a, b}) == 1
