"""The task families of the synthetic world, each with an exact oracle.

Sixteen families in five categories (``CATEGORIES``); every family has four phrasings:

* arithmetic: ``add``, ``subtract``, ``multi_step`` (``a ± b ± c``);
* string: ``reverse``, ``uppercase``, ``repeat`` (a word k times), ``remove_vowels``;
* selection: ``sort`` (ascending/descending), ``extreme`` (max/min), ``kth`` (k-th smallest or
  largest);
* counting: ``count_letter``, ``count_items``;
* gap (checking an answer is easier than producing one, and several answers may be right):
  ``pair_sum`` (two list numbers with a given sum), ``word_pick`` (a list word with a given first
  letter and length), ``factor`` (``n = a * b`` with ``a, b > 1``), ``solve_linear``
  (``ax + b = c``, checked by substitution).

Difficulty 1..3 scales magnitudes, list lengths and word lengths; difficulty 1 is sized for the
embedded ~1-3M-parameter model (prompts <= ~40 tokens, answers <= ~20 tokens with a 512-piece
tokenizer that splits digits). Partial credit and the plausible mistakes of each family are
described in its class docstring; the shared scoring rule is in ``base``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional, Tuple

from selfreward_jax.synthetic.base import (Family, Template, is_composite, list_credit,
                                           numeric_credit, parse_int, parse_ints, pick_other,
                                           string_credit)
from selfreward_jax.synthetic.words import VOWELS, WORDS, words_between

T = Template
INT_ANSWER = r"-?\d+"
WORD_ANSWER = r"[A-Za-z]+"
LIST_ANSWER = r"-?\d+(?:, -?\d+)*"
PAIR_ANSWER = r"-?\d+ and -?\d+"
MAX_ABS = 10**6
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _d(difficulty: int, table: Tuple[Any, Any, Any]) -> Any:
  """The entry of a (easy, medium, hard) table for ``difficulty`` (clamped to 1..3)."""
  return table[min(max(int(difficulty), 1), 3) - 1]


def _ok_int(x: Any) -> bool:
  return isinstance(x, int) and abs(x) <= MAX_ABS


def _ok_word(w: Any, max_len: int = 20) -> bool:
  return isinstance(w, str) and 1 <= len(w) <= max_len and w.isalpha() and w.islower()


def _ok_ints(xs: Any, lo: int = 2, hi: int = 10) -> bool:
  return isinstance(xs, tuple) and lo <= len(xs) <= hi and all(_ok_int(x) for x in xs)


def _one_token(answer: Optional[str]) -> Optional[str]:
  """The stripped answer if it is a single whitespace-free token, else ``None`` (a sentence is no
  answer to a one-word task, however many letters it shares with the target)."""
  if answer is None:
    return None
  answer = answer.strip()
  return answer if answer and len(answer.split()) == 1 else None


def _offset_miss(ref: int, rng: random.Random) -> int:
  """A clearly wrong number: at least 3 away from ``ref``, scaled to its magnitude."""
  lo = max(3, abs(ref) // 3)
  return ref + rng.choice((-1, 1)) * rng.randint(lo, max(lo + 3, abs(ref) + 10))


# ---- arithmetic ----------------------------------------------------------------------------------


class _Numeric(Family):
  """A family whose answer is one integer: numeric partial credit (``numeric_credit``)."""

  answer_regex = INT_ANSWER

  def value(self, params: Mapping[str, Any]) -> int:
    raise NotImplementedError

  def mistakes(self, params: Mapping[str, Any]) -> List[int]:
    """Plausible wrong values (off by one, wrong operation...)."""
    v = self.value(params)
    return [v - 1, v + 1]

  def reference(self, params: Mapping[str, Any]) -> str:
    return str(self.value(params))

  def credit(self, params: Mapping[str, Any], answer: Optional[str]) -> float:
    return numeric_credit(parse_int(answer), self.value(params))

  def near_miss(self, params: Mapping[str, Any], rng: random.Random) -> str:
    return str(rng.choice(self.mistakes(params)))

  def far_miss(self, params: Mapping[str, Any], rng: random.Random) -> str:
    return str(_offset_miss(self.value(params), rng))


class Add(_Numeric):
  """``a + b``. Mistakes: off by one or ten, ``a - b``, digits of the sum swapped."""

  name, category = "add", "arithmetic"
  gap = "none: checking a sum means computing it"
  fields = {"a": "int", "b": "int"}
  templates = (
      T("What is {a} plus {b}?"),
      T("Compute {a} + {b}."),
      T("Add {a} and {b}."),
      T("What is the sum of {a} and {b}?"),
  )

  def generate(self, rng, difficulty, fixed):
    hi = _d(difficulty, (20, 99, 999))
    return {"a": rng.randint(0, hi), "b": rng.randint(0, hi)}

  def validate(self, p):
    return _ok_int(p["a"]) and _ok_int(p["b"])

  def value(self, p):
    return p["a"] + p["b"]

  def mistakes(self, p):
    v = self.value(p)
    out = [v - 1, v + 1, v + 10, v - 10, p["a"] - p["b"]]
    if v >= 10:
      out.append(int(str(v)[::-1]))
    return out


class Subtract(_Numeric):
  """``a - b`` (non-negative at difficulty 1-2). Mistakes: off by one or ten, ``a + b``,
  ``b - a``."""

  name, category = "subtract", "arithmetic"
  gap = "none: checking a difference means computing it"
  fields = {"a": "int", "b": "int"}
  templates = (
      T("What is {a} minus {b}?"),
      T("Compute {a} - {b}."),
      T("Subtract {b} from {a}."),
      T("What do you get if you take {b} away from {a}?"),
  )

  def generate(self, rng, difficulty, fixed):
    hi = _d(difficulty, (20, 99, 999))
    a, b = rng.randint(0, hi), rng.randint(0, hi)
    if difficulty < 3 and a < b:
      a, b = b, a
    return {"a": a, "b": b}

  def validate(self, p):
    return _ok_int(p["a"]) and _ok_int(p["b"])

  def value(self, p):
    return p["a"] - p["b"]

  def mistakes(self, p):
    v = self.value(p)
    return [v - 1, v + 1, v + 10, v - 10, p["a"] + p["b"], p["b"] - p["a"]]


def _apply(x: int, op: str, y: int) -> int:
  return x + y if op == "+" else x - y


class MultiStep(_Numeric):
  """``a op1 b op2 c`` with ``op`` in ``+``/``-``, evaluated left to right (intermediate and final
  values non-negative at difficulty 1-2). Mistakes: stopping after the first step, flipping the
  second operation, grouping right to left, off by one."""

  name, category = "multi_step", "arithmetic"
  gap = "none: checking means redoing both steps"
  fields = {"a": "int", "b": "int", "c": "int", "op1": "opsym", "op2": "opsym"}
  templates = (
      T("Compute {a} {op1} {b} {op2} {c}."),
      T("What is {a} {op1:opname} {b} {op2:opname} {c}?"),
      T("Start with {a}, {op1:opverb} {b}, then {op2:opverb} {c}. What do you get?"),
      T("Evaluate {a} {op1} {b} {op2} {c}."),
  )

  def generate(self, rng, difficulty, fixed):
    hi = _d(difficulty, (10, 50, 200))
    while True:
      p = {"a": rng.randint(0, hi), "b": rng.randint(0, hi), "c": rng.randint(0, hi),
           "op1": rng.choice("+-"), "op2": rng.choice("+-")}
      mid = _apply(p["a"], p["op1"], p["b"])
      if difficulty >= 3 or (mid >= 0 and _apply(mid, p["op2"], p["c"]) >= 0):
        return p

  def validate(self, p):
    return (all(_ok_int(p[k]) for k in "abc") and p["op1"] in ("+", "-")
            and p["op2"] in ("+", "-"))

  def value(self, p):
    return _apply(_apply(p["a"], p["op1"], p["b"]), p["op2"], p["c"])

  def mistakes(self, p):
    v = self.value(p)
    flip = "-" if p["op2"] == "+" else "+"
    mid = _apply(p["a"], p["op1"], p["b"])
    right_to_left = _apply(p["a"], p["op1"], _apply(p["b"], p["op2"], p["c"]))
    return [v - 1, v + 1, mid, _apply(mid, flip, p["c"]), right_to_left]


# ---- string transformations ----------------------------------------------------------------------


class _StringFamily(Family):
  """A family whose answer is one word: edit-distance partial credit (``string_credit``); an answer
  with spaces earns nothing."""

  answer_regex = WORD_ANSWER
  fields = {"w": "word"}
  lengths = ((3, 5), (4, 6), (5, 7))

  def target(self, p: Mapping[str, Any]) -> str:
    raise NotImplementedError

  def reference(self, p):
    return self.target(p)

  def credit(self, p, answer):
    return string_credit(_one_token(answer), self.target(p))

  def word_pool(self, difficulty: int) -> Tuple[str, ...]:
    return words_between(*_d(difficulty, self.lengths))

  def generate(self, rng, difficulty, fixed):
    return {"w": rng.choice(self.word_pool(difficulty))}

  def validate(self, p):
    return _ok_word(p["w"])

  def far_miss(self, p, rng):
    return self.target({"w": pick_other(rng, WORDS, p["w"])})


def _swap_adjacent(s: str, rng: random.Random) -> str:
  if len(s) < 2:
    return s + s
  i = rng.randrange(len(s) - 1)
  return s[:i] + s[i + 1] + s[i] + s[i + 2:]


def _drop_char(s: str, rng: random.Random) -> str:
  if len(s) < 2:
    return s + "x"
  i = rng.randrange(len(s))
  return s[:i] + s[i + 1:]


class Reverse(_StringFamily):
  """Reverse a word. Mistakes: two adjacent letters left unswapped, the word unchanged, a letter
  dropped, only the first half reversed."""

  name, category = "reverse", "string"
  gap = "none: checking means reversing the word"
  templates = (
      T("Reverse the word {w}."),
      T("Write {w} backwards."),
      T("Spell {w} in reverse order."),
      T("What is {w} spelled backwards?"),
  )

  def generate(self, rng, difficulty, fixed):
    pool = [w for w in self.word_pool(difficulty) if w != w[::-1]]
    return {"w": rng.choice(pool)}

  def target(self, p):
    return p["w"][::-1]

  def near_miss(self, p, rng):
    r, w = self.target(p), p["w"]
    half = len(w) // 2
    return rng.choice([_swap_adjacent(r, rng), w, _drop_char(r, rng), w[:half][::-1] + w[half:]])


class Uppercase(_StringFamily):
  """Write a word in capitals. Credit ``0.7 * sim(answer, WORD) + 0.3 * sim(lower(answer), word)``
  (right letters in the wrong case earn a little). Mistakes: one letter left lowercase, only the
  first letter capitalised, the word unchanged, a letter dropped."""

  name, category = "uppercase", "string"
  gap = "none: checking means uppercasing the word"
  templates = (
      T("Write {w} in capital letters."),
      T("Convert {w} to uppercase."),
      T("Change the word {w} to all caps."),
      T("What is {w} in uppercase letters?"),
  )

  def target(self, p):
    return p["w"].upper()

  def credit(self, p, answer):
    answer = _one_token(answer)
    if answer is None:
      return 0.0
    return 0.7 * string_credit(answer, self.target(p)) + 0.3 * string_credit(answer.lower(), p["w"])

  def near_miss(self, p, rng):
    r, w = self.target(p), p["w"]
    i = rng.randrange(len(w))
    return rng.choice([r[:i] + w[i] + r[i + 1:], w.capitalize(), w, _drop_char(r, rng)])


class Repeat(_StringFamily):
  """Write a word ``k`` times, separated by spaces. Credit: per-position agreement of the answer's
  words with ``[w] * k``. Mistakes: ``k - 1`` or ``k + 1`` copies, one copy misspelt."""

  name, category = "repeat", "string"
  gap = "none: checking means counting the copies"
  fields = {"w": "word", "k": "int"}
  answer_regex = r"[A-Za-z]+(?: [A-Za-z]+)*"
  lengths = ((3, 4), (3, 5), (4, 6))
  templates = (
      T("Repeat the word {w} {k} times."),
      T("Write {w} {k} times."),
      T("Write the word {w} exactly {k} times."),
      T("Say {w} {k} times in a row."),
  )

  def generate(self, rng, difficulty, fixed):
    lo, hi = _d(difficulty, ((2, 3), (2, 4), (3, 5)))
    return {"w": rng.choice(self.word_pool(difficulty)), "k": rng.randint(lo, hi)}

  def validate(self, p):
    return _ok_word(p["w"]) and isinstance(p["k"], int) and 1 <= p["k"] <= 10

  def target(self, p):
    return " ".join([p["w"]] * p["k"])

  def credit(self, p, answer):
    if answer is None:
      return 0.0
    return list_credit(answer.replace(",", " ").split(), [p["w"]] * p["k"])

  def near_miss(self, p, rng):
    w, k = p["w"], p["k"]
    words = [w] * k
    words[rng.randrange(k)] = _swap_adjacent(w, rng)
    return rng.choice([" ".join([w] * (k + 1)), " ".join([w] * max(1, k - 1)), " ".join(words)])

  def far_miss(self, p, rng):
    return " ".join([pick_other(rng, WORDS, p["w"])] * rng.randint(1, p["k"] + 2))


def _strip_vowels(w: str) -> str:
  return "".join(ch for ch in w if ch not in VOWELS)


class RemoveVowels(_StringFamily):
  """Delete the vowels (a, e, i, o, u) of a word. Mistakes: one vowel kept, the word unchanged,
  a consonant dropped as well, the consonants removed instead."""

  name, category = "remove_vowels", "string"
  gap = "none: checking means deleting the vowels"
  templates = (
      T("Remove the vowels from {w}."),
      T("Delete every vowel in the word {w}."),
      T("Write {w} without its vowels."),
      T("What is {w} with all vowels removed?"),
  )

  def generate(self, rng, difficulty, fixed):
    pool = [w for w in self.word_pool(difficulty) if any(ch in VOWELS for ch in w)]
    return {"w": rng.choice(pool)}

  def validate(self, p):
    return _ok_word(p["w"]) and _strip_vowels(p["w"]) != ""

  def target(self, p):
    return _strip_vowels(p["w"])

  def near_miss(self, p, rng):
    w = p["w"]
    vowel_idx = [i for i, ch in enumerate(w) if ch in VOWELS] or [0]
    keep = rng.choice(vowel_idx)
    one_kept = "".join(ch for i, ch in enumerate(w) if ch not in VOWELS or i == keep)
    only_vowels = "".join(ch for ch in w if ch in VOWELS) or w
    return rng.choice([one_kept, w, _drop_char(self.target(p), rng), only_vowels])


# ---- sorting and selection -----------------------------------------------------------------------


def _distinct_ints(rng: random.Random, n: int, lo: int, hi: int) -> Tuple[int, ...]:
  return tuple(rng.sample(range(lo, hi + 1), n))


def _rank_credit(x: Optional[int], xs: Tuple[int, ...], ref: int) -> float:
  """Selection credit: 1 for ``ref``; a list member earns ``0.6 * (1 - rank distance / (m - 1))``
  over the ``m`` distinct values (the runner-up earns most); anything else 0."""
  if x is None:
    return 0.0
  if x == ref:
    return 1.0
  order = sorted(set(xs))
  if x not in order or len(order) < 2:
    return 0.0
  return 0.6 * (1.0 - abs(order.index(x) - order.index(ref)) / (len(order) - 1))


class Sort(Family):
  """Sort 3-5 distinct numbers ascending or descending (the template fixes ``order``). Credit:
  per-position agreement with the sorted list. Mistakes: two neighbours swapped, the input order,
  the opposite order, one element dropped."""

  name, category = "sort", "selection"
  gap = "small: checking order is one pass, but checking it is a permutation of the input is a sort"
  fields = {"xs": "ints"}
  answer_regex = LIST_ANSWER
  templates = (
      T("Sort these numbers from smallest to largest: {xs}.", (("order", "asc"),)),
      T("Put {xs} in increasing order.", (("order", "asc"),)),
      T("Arrange the numbers {xs} in ascending order.", (("order", "asc"),)),
      T("Order from low to high: {xs}.", (("order", "asc"),)),
      T("Sort these numbers from largest to smallest: {xs}.", (("order", "desc"),)),
      T("Put {xs} in decreasing order.", (("order", "desc"),)),
      T("Arrange the numbers {xs} in descending order.", (("order", "desc"),)),
      T("Order from high to low: {xs}.", (("order", "desc"),)),
  )

  def generate(self, rng, difficulty, fixed):
    n, hi = _d(difficulty, ((3, 20), (4, 99), (5, 999)))
    while True:
      p = {"xs": _distinct_ints(rng, n, 0, hi), "order": fixed["order"]}
      if list(p["xs"]) != self.sorted(p):
        return p

  def validate(self, p):
    return _ok_ints(p["xs"]) and p["order"] in ("asc", "desc")

  def sorted(self, p) -> List[int]:
    return sorted(p["xs"], reverse=p["order"] == "desc")

  def reference(self, p):
    return ", ".join(map(str, self.sorted(p)))

  def credit(self, p, answer):
    if answer is None:
      return 0.0
    items = [parse_int(t) if t.lstrip("-").isdigit() else None
             for t in answer.replace(",", " ").split()]
    return list_credit(items, self.sorted(p))

  def near_miss(self, p, rng):
    s = self.sorted(p)
    swapped = list(s)
    i = rng.randrange(len(s) - 1)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    dropped = list(s)
    dropped.pop(rng.randrange(len(s)))
    out = rng.choice([swapped, list(p["xs"]), s[::-1], dropped])
    return ", ".join(map(str, out))

  def far_miss(self, p, rng):
    xs = list(p["xs"])
    rng.shuffle(xs)
    xs[rng.randrange(len(xs))] = _offset_miss(xs[0], rng)
    return ", ".join(map(str, xs))


class Extreme(Family):
  """The largest or smallest of 3-7 numbers (the template fixes ``which``). Credit: rank-based
  (``_rank_credit``): the runner-up earns most of the partial credit. Mistakes: the runner-up, the
  opposite extreme, the first number."""

  name, category = "extreme", "selection"
  gap = "none: checking the maximum means scanning the list"
  fields = {"xs": "ints"}
  answer_regex = INT_ANSWER
  templates = (
      T("What is the largest number in the list {xs}?", (("which", "max"),)),
      T("Which number is the biggest: {xs}?", (("which", "max"),)),
      T("Find the maximum of {xs}.", (("which", "max"),)),
      T("Give the largest of these numbers: {xs}.", (("which", "max"),)),
      T("What is the smallest number in the list {xs}?", (("which", "min"),)),
      T("Which number is the smallest: {xs}?", (("which", "min"),)),
      T("Find the minimum of {xs}.", (("which", "min"),)),
      T("Give the smallest of these numbers: {xs}.", (("which", "min"),)),
  )

  def generate(self, rng, difficulty, fixed):
    (lo_n, hi_n), hi = _d(difficulty, (((3, 4), 20), ((4, 5), 99), ((5, 7), 999)))
    return {"xs": _distinct_ints(rng, rng.randint(lo_n, hi_n), 0, hi), "which": fixed["which"]}

  def validate(self, p):
    return _ok_ints(p["xs"]) and p["which"] in ("max", "min")

  def value(self, p) -> int:
    return max(p["xs"]) if p["which"] == "max" else min(p["xs"])

  def reference(self, p):
    return str(self.value(p))

  def credit(self, p, answer):
    return _rank_credit(parse_int(answer), p["xs"], self.value(p))

  def near_miss(self, p, rng):
    s = sorted(set(p["xs"]), reverse=p["which"] == "max")
    return str(rng.choice([s[1] if len(s) > 1 else s[0] + 1, s[-1], p["xs"][0]]))

  def far_miss(self, p, rng):
    return str(_offset_miss(self.value(p), rng))


class Kth(Family):
  """The k-th smallest or largest (k = 2..n-1, "second"...) of 3-6 distinct numbers. Credit:
  rank-based. Mistakes: the (k-1)-th or (k+1)-th, the k-th from the wrong end, the k-th in list
  order."""

  name, category = "kth", "selection"
  gap = "small: checking needs counting smaller elements, about as hard as selecting"
  fields = {"xs": "ints", "k": "ordinal"}
  answer_regex = INT_ANSWER
  templates = (
      T("What is the {k} smallest number in the list {xs}?", (("which", "smallest"),)),
      T("Find the {k} smallest of {xs}.", (("which", "smallest"),)),
      T("Among {xs}, which number is the {k} smallest?", (("which", "smallest"),)),
      T("Which is the {k} smallest number: {xs}?", (("which", "smallest"),)),
      T("What is the {k} largest number in the list {xs}?", (("which", "largest"),)),
      T("Find the {k} largest of {xs}.", (("which", "largest"),)),
      T("Among {xs}, which number is the {k} largest?", (("which", "largest"),)),
      T("Which is the {k} largest number: {xs}?", (("which", "largest"),)),
  )

  def generate(self, rng, difficulty, fixed):
    (lo_n, hi_n), hi = _d(difficulty, (((3, 4), 20), ((4, 5), 99), ((5, 6), 999)))
    n = rng.randint(lo_n, hi_n)
    k = 2 if difficulty <= 1 else rng.randint(2, n - 1)
    return {"xs": _distinct_ints(rng, n, 0, hi), "k": k, "which": fixed["which"]}

  def validate(self, p):
    xs, k = p["xs"], p["k"]
    return (_ok_ints(p["xs"]) and len(set(xs)) == len(xs) and isinstance(k, int)
            and 2 <= k <= min(len(xs), 6) and p["which"] in ("smallest", "largest"))

  def order(self, p) -> List[int]:
    return sorted(p["xs"], reverse=p["which"] == "largest")

  def value(self, p) -> int:
    return self.order(p)[p["k"] - 1]

  def reference(self, p):
    return str(self.value(p))

  def credit(self, p, answer):
    return _rank_credit(parse_int(answer), p["xs"], self.value(p))

  def near_miss(self, p, rng):
    s, k = self.order(p), p["k"]
    options = [s[k - 2], s[-k], p["xs"][k - 1]] + ([s[k]] if k < len(s) else [])
    return str(rng.choice(options))

  def far_miss(self, p, rng):
    return str(_offset_miss(self.value(p), rng))


# ---- counting ------------------------------------------------------------------------------------


class CountLetter(_Numeric):
  """How often a letter occurs in a word (the letter is in the word 75% of the time, else the
  answer is 0). Mistakes: off by one, the word's length, the count of another letter."""

  name, category = "count_letter", "counting"
  gap = "none: checking means counting"
  fields = {"c": "letter", "w": "word"}
  templates = (
      T("How many times does the letter {c} appear in {w}?"),
      T("Count the letter {c} in the word {w}."),
      T("In the word {w}, how many times does {c} occur?"),
      T("How often does {c} occur in {w}?"),
  )

  def generate(self, rng, difficulty, fixed):
    w = rng.choice(words_between(*_d(difficulty, ((3, 5), (4, 6), (5, 7)))))
    if rng.random() < 0.75:
      c = rng.choice(w)
    else:
      c = rng.choice([ch for ch in LETTERS if ch not in w])
    return {"c": c, "w": w}

  def validate(self, p):
    return _ok_word(p["w"]) and isinstance(p["c"], str) and len(p["c"]) == 1 and p["c"].isalpha()

  def value(self, p):
    return p["w"].count(p["c"])

  def mistakes(self, p):
    v, w = self.value(p), p["w"]
    other = [w.count(ch) for ch in set(w) if ch != p["c"]]
    return [v + 1, max(0, v - 1) if v else v + 2, len(w)] + [x for x in other if x != v][:1]


class CountItems(_Numeric):
  """How many words a list holds (2-8 distinct words, 2-4 at difficulty 1). Mistakes: off by one,
  the number of letters of the first word."""

  name, category = "count_items", "counting"
  gap = "none: checking means counting"
  fields = {"ws": "words"}
  templates = (
      T("How many words are in the list {ws}?"),
      T("Count the items in this list: {ws}."),
      T("How many things are listed here: {ws}?"),
      T("Count the words: {ws}."),
  )

  def generate(self, rng, difficulty, fixed):
    lo, hi = _d(difficulty, ((2, 4), (3, 6), (4, 8)))
    return {"ws": tuple(rng.sample(words_between(3, 5), rng.randint(lo, hi)))}

  def validate(self, p):
    ws = p["ws"]
    return isinstance(ws, tuple) and 2 <= len(ws) <= 12 and all(_ok_word(w) for w in ws)

  def value(self, p):
    return len(p["ws"])

  def mistakes(self, p):
    v = self.value(p)
    return [v - 1, v + 1, v + 1, len(p["ws"][0])]


# ---- generate / verify gap -----------------------------------------------------------------------


def _pair(a: int, b: int) -> str:
  return f"{a} and {b}"


def _from_list(values: List[int], pool: Tuple[int, ...]) -> int:
  """How many of ``values`` can be drawn from ``pool`` (a multiset: each entry used once)."""
  left = list(pool)
  n = 0
  for v in values:
    if v in left:
      left.remove(v)
      n += 1
  return n


class PairSum(Family):
  """Two numbers from a list (distinct entries) that add up to ``t``; several pairs may work.
  Credit for an answer with two numbers: 1 if both come from the list and sum to ``t``, else
  ``0.2 * (#from the list) + 0.4 * numeric_credit(sum, t)``; halved if more than two numbers are
  given; 0 if fewer. Mistakes: a list pair with another sum, a pair completing ``t`` with a number
  not in the list, a number used twice."""

  name, category = "pair_sum", "gap"
  gap = ("producing needs a search over pairs; checking is two look-ups and one addition; "
         "any valid pair is accepted")
  fields = {"xs": "ints", "t": "int"}
  answer_regex = PAIR_ANSWER
  templates = (
      T("Give two numbers from the list {xs} that add up to {t}."),
      T("Which two numbers in {xs} sum to {t}?"),
      T("From the list {xs}, pick two numbers whose sum is {t}."),
      T("Find two numbers in {xs} that add up to {t}."),
  )

  def generate(self, rng, difficulty, fixed):
    n, hi = _d(difficulty, ((4, 20), (5, 50), (6, 200)))
    xs = _distinct_ints(rng, n, 1, hi)
    i, j = rng.sample(range(n), 2)
    return {"xs": xs, "t": xs[i] + xs[j]}

  def pairs(self, p) -> List[Tuple[int, int]]:
    xs = p["xs"]
    return [(xs[i], xs[j]) for i in range(len(xs)) for j in range(i + 1, len(xs))
            if xs[i] + xs[j] == p["t"]]

  def validate(self, p):
    return _ok_ints(p["xs"]) and _ok_int(p["t"]) and bool(self.pairs(p))

  def reference(self, p):
    return _pair(*self.pairs(p)[0])

  def valid_answers(self, p):
    return [_pair(a, b) for a, b in self.pairs(p)] + [_pair(b, a) for a, b in self.pairs(p)]

  def credit(self, p, answer):
    nums = parse_ints(answer)
    if len(nums) < 2:
      return 0.0
    a, b = nums[:2]
    n_in = _from_list([a, b], p["xs"])
    if len(nums) == 2 and n_in == 2 and a + b == p["t"]:
      return 1.0
    c = 0.2 * n_in + 0.4 * numeric_credit(a + b, p["t"])
    return c if len(nums) == 2 else 0.5 * c

  def near_miss(self, p, rng):
    xs, t = p["xs"], p["t"]
    wrong = [(xs[i], xs[j]) for i in range(len(xs)) for j in range(i + 1, len(xs))
             if xs[i] + xs[j] != t]
    x = rng.choice(xs)
    options = [_pair(x, t - x), _pair(x, x)]
    if wrong:
      wrong.sort(key=lambda ab: abs(ab[0] + ab[1] - t))
      options.append(_pair(*rng.choice(wrong[:3])))
    return rng.choice(options)

  def far_miss(self, p, rng):
    t = p["t"]
    return _pair(rng.randint(1, max(2, t)), rng.randint(1, max(2, t)))


class WordPick(Family):
  """A word from the list that starts with letter ``c`` and has ``n`` letters; several may fit.
  Credit: 0.4 for a list word, 0.2 for the right first letter, 0.2 for the right length; 1 only when
  all three hold. Mistakes: a list word that fits one condition only, a fitting word not in the
  list."""

  name, category = "word_pick", "gap"
  gap = ("producing needs checking every list word against both conditions; checking one word is "
         "a look-up, a first letter and a length; any fitting word is accepted")
  fields = {"ws": "words", "c": "letter", "n": "int"}
  answer_regex = r"[a-z]+"
  templates = (
      T("Name a word from {ws} that starts with {c} and has {n} letters."),
      T("From {ws}, pick a {n} letter word starting with {c}."),
      T("Which word in {ws} starts with {c} and has {n} letters?"),
      T("Pick a word with {n} letters starting with {c}: {ws}."),
  )

  def generate(self, rng, difficulty, fixed):
    k, (lo, hi) = _d(difficulty, ((4, (3, 5)), (5, (3, 6)), (6, (3, 7))))
    pool_all = words_between(lo, hi)
    target = rng.choice(pool_all)
    c, n = target[0], len(target)
    same_letter = [w for w in pool_all if w[0] == c and len(w) != n]
    same_len = [w for w in pool_all if w[0] != c and len(w) == n]
    ws = {target}
    while len(ws) < k:
      pool = rng.choice([same_letter, same_len, pool_all]) or pool_all
      ws.add(rng.choice(pool))
    ws = sorted(ws)
    rng.shuffle(ws)
    return {"ws": tuple(ws), "c": c, "n": n}

  def fits(self, p, w: str) -> bool:
    return w.startswith(p["c"]) and len(w) == p["n"]

  def validate(self, p):
    ws = p["ws"]
    return (isinstance(ws, tuple) and 2 <= len(ws) <= 10 and all(_ok_word(w) for w in ws)
            and isinstance(p["n"], int) and any(self.fits(p, w) for w in ws))

  def valid_answers(self, p):
    return [w for w in p["ws"] if self.fits(p, w)]

  def reference(self, p):
    return self.valid_answers(p)[0]

  def credit(self, p, answer):
    w = _one_token(answer)
    if w is None:
      return 0.0
    if w in p["ws"] and self.fits(p, w):
      return 1.0
    return 0.4 * (w in p["ws"]) + 0.2 * w.startswith(p["c"]) + 0.2 * (len(w) == p["n"])

  def near_miss(self, p, rng):
    partial = [w for w in p["ws"] if not self.fits(p, w)]
    outside = [w for w in WORDS if self.fits(p, w) and w not in p["ws"]]
    options = partial + outside[:2]
    return rng.choice(options) if options else self.far_miss(p, rng)

  def far_miss(self, p, rng):
    return rng.choice([w for w in WORDS if w not in p["ws"] and not w.startswith(p["c"])])


class Factor(Family):
  """``n = a * b`` with ``a, b > 1`` (``n`` composite); every factor pair is accepted. Credit for an
  answer with two numbers: 1 if both exceed 1 and multiply to ``n``, else ``0.4 * (both > 1) +
  0.4 * numeric_credit(a * b, n)``; halved if more than two numbers; 0 if fewer. Mistakes:
  ``1 and n``, a factor pair with one factor off by one, ``2 and n // 2`` for odd ``n``."""

  name, category = "factor", "gap"
  gap = ("producing needs trial division; checking is one multiplication; any factor pair is "
         "accepted")
  fields = {"n": "int"}
  answer_regex = PAIR_ANSWER
  templates = (
      T("Factor {n} into two numbers greater than 1."),
      T("Write {n} as a product of two numbers bigger than 1."),
      T("Give two whole numbers above 1 whose product is {n}."),
      T("Find two numbers greater than 1 that multiply to {n}."),
  )

  def generate(self, rng, difficulty, fixed):
    lo, hi = _d(difficulty, ((4, 99), (10, 300), (100, 999)))
    while True:
      n = rng.randint(lo, hi)
      if is_composite(n):
        return {"n": n}

  def validate(self, p):
    return isinstance(p["n"], int) and p["n"] <= MAX_ABS and is_composite(p["n"])

  def pairs(self, p) -> List[Tuple[int, int]]:
    n = p["n"]
    return [(a, n // a) for a in range(2, int(n**0.5) + 1) if n % a == 0]

  def reference(self, p):
    return _pair(*self.pairs(p)[0])

  def valid_answers(self, p):
    return [_pair(a, b) for a, b in self.pairs(p)] + [_pair(b, a) for a, b in self.pairs(p)]

  def credit(self, p, answer):
    nums = parse_ints(answer)
    if len(nums) < 2:
      return 0.0
    a, b = nums[:2]
    if len(nums) == 2 and a > 1 and b > 1 and a * b == p["n"]:
      return 1.0
    c = 0.4 * (a > 1 and b > 1) + 0.4 * numeric_credit(a * b, p["n"])
    return c if len(nums) == 2 else 0.5 * c

  def near_miss(self, p, rng):
    n = p["n"]
    a, b = rng.choice(self.pairs(p))
    options = [_pair(1, n), _pair(a, b + rng.choice((-1, 1))), _pair(a + 1, b)]
    if n % 2:
      options.append(_pair(2, n // 2))
    return rng.choice(options)

  def far_miss(self, p, rng):
    return _pair(rng.randint(2, 9), rng.randint(2, max(3, p["n"] // 3)))


class SolveLinear(_Numeric):
  """``x`` with ``a x + b = c`` (integer solution). The answer is unique, but checking it is a
  substitution while finding it inverts two operations. Credit: numeric on ``x``. Mistakes:
  forgetting to divide (``c - b``), the wrong sign of ``b``, off by one."""

  name, category = "solve_linear", "gap"
  gap = "producing inverts two operations; checking substitutes x back (one multiply-add)"
  fields = {"a": "int", "b": "sterm", "c": "int"}
  templates = (
      T("Find x such that {a}x {b} = {c}."),
      T("Solve for x: {a}x {b} = {c}."),
      T("What value of x makes {a}x {b} = {c} true?"),
      T("If {a}x {b} = {c}, what is x?"),
  )

  def generate(self, rng, difficulty, fixed):
    a_hi, x_lo, x_hi, b_hi = _d(difficulty,
                                ((5, 0, 10, 10), (9, -10, 20, 30), (15, -50, 50, 100)))
    a, x, b = rng.randint(2, a_hi), rng.randint(x_lo, x_hi), rng.randint(-b_hi, b_hi)
    return {"a": a, "b": b, "c": a * x + b}

  def validate(self, p):
    a, b, c = p["a"], p["b"], p["c"]
    return (_ok_int(a) and _ok_int(b) and _ok_int(c) and a != 0 and (c - b) % a == 0)

  def value(self, p):
    return (p["c"] - p["b"]) // p["a"]

  def mistakes(self, p):
    x, a, b, c = self.value(p), p["a"], p["b"], p["c"]
    out = [x - 1, x + 1, c - b]
    if (c + b) % a == 0:
      out.append((c + b) // a)
    return out


# ---- registry ------------------------------------------------------------------------------------

FAMILIES: Dict[str, Family] = {f.name: f for f in [
    Add(), Subtract(), MultiStep(),
    Reverse(), Uppercase(), Repeat(), RemoveVowels(),
    Sort(), Extreme(), Kth(),
    CountLetter(), CountItems(),
    PairSum(), WordPick(), Factor(), SolveLinear(),
]}
"""All families by name, in a fixed order."""

CATEGORIES: Dict[str, Tuple[str, ...]] = {}
for _f in FAMILIES.values():
  CATEGORIES.setdefault(_f.category, ())
  CATEGORIES[_f.category] += (_f.name,)
"""``category -> family names``: arithmetic, string, selection, counting, gap."""


def get_family(name: str) -> Family:
  """The family called ``name``; ``KeyError`` naming the known families otherwise."""
  try:
    return FAMILIES[name]
  except KeyError:
    raise KeyError(f"unknown task family {name!r}; known: {sorted(FAMILIES)}") from None
