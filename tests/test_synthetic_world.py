"""Synthetic task world: seeded determinism, disjoint splits, corpora, IFT/EFT seed data, oracle
judging (candidates, ranks, the 0-5 rubric) and length bounds."""

import collections
import itertools
import random

import pytest

from selfreward_jax.synthetic import (DEFAULT_SPLITS, FAMILIES, Task, TaskWorld,
                                      candidate_responses, eft_candidates, ift_examples,
                                      oracle_judgement, oracle_rank, parse_task,
                                      pretraining_corpus, pretraining_examples, prompt_validity,
                                      rank_agreement,
                                      rubric_points, split_of, task_of, tokenizer_corpus)
from selfreward_jax.synthetic.corpus import chat_text


def _split_chat(text):
  assert text.startswith("[INST] ") and " [/INST] " in text, text
  prompt, response = text[len("[INST] "):].split(" [/INST] ")
  return prompt, response


# ---- TaskWorld -----------------------------------------------------------------------------------


def test_sampling_is_deterministic_by_seed():
  a = TaskWorld(seed=3).sample(300, "eval")
  assert a == TaskWorld(seed=3).sample(300, "eval")
  assert a[:100] == TaskWorld(seed=3).sample(100, "eval")  # prefix-stable
  assert a != TaskWorld(seed=4).sample(300, "eval")
  assert TaskWorld(3).sample(50, stream=1) != TaskWorld(3).sample(50, stream=2)
  assert len({t.prompt for t in a}) == 300  # unique by default


def test_splits_are_disjoint_and_sized():
  world = TaskWorld(seed=0)
  by_split = {s: world.sample(400, s) for s in world.split_names}
  for s, tasks in by_split.items():
    assert all(world.split_of(t) == s for t in tasks)
  for (s1, t1), (s2, t2) in itertools.combinations(by_split.items(), 2):
    assert not {t.prompt for t in t1} & {t.prompt for t in t2}, (s1, s2)
    assert not {t.key for t in t1} & {t.key for t in t2}, (s1, s2)  # not even re-worded
  # a problem's split is the same under every phrasing and every world seed
  t = by_split["eval"][0]
  fam = t.family_obj
  for i, tpl in enumerate(fam.templates):
    if tpl.fixed_params.items() <= t.params.items():
      assert split_of(Task(t.family, t.params, i)) == "eval"
  # shares roughly as configured
  rng = random.Random(0)
  counts = collections.Counter(world.split_of(world.random_task(rng)) for _ in range(6000))
  for name, share in DEFAULT_SPLITS:
    assert abs(counts[name] / 6000 - share) < 0.03, (name, counts)


def test_every_family_represented_and_family_weights():
  tasks = TaskWorld(seed=0).sample(800, "train")
  assert set(t.family for t in tasks) == set(FAMILIES)
  sub = TaskWorld(seed=0, families={"add": 3.0, "reverse": 1.0}).sample(400, "train")
  c = collections.Counter(t.family for t in sub)
  assert set(c) == {"add", "reverse"} and c["add"] > 2 * c["reverse"]
  with pytest.raises(KeyError):
    TaskWorld(families=["add", "nope"])
  with pytest.raises(ValueError):
    TaskWorld(difficulty=4)
  with pytest.raises(ValueError):
    TaskWorld(splits=(("train", 0.5), ("eval", 0.4)))


def test_unique_sampling_reports_exhaustion():
  world = TaskWorld(seed=0, families=["factor"])
  with pytest.raises(ValueError, match="distinct prompts"):
    world.sample(500, "eval", max_tries=2000)
  assert len(world.sample(500, "eval", unique=False)) == 500


def test_difficulty_scales_magnitudes():
  def mean_ref(d):
    tasks = TaskWorld(seed=0, difficulty=d, families=["add"]).sample(200, "train")
    return sum(int(t.reference) for t in tasks) / len(tasks)
  assert mean_ref(1) < mean_ref(2) < mean_ref(3)


@pytest.mark.parametrize("difficulty,max_prompt,max_response", [(1, 90, 30), (2, 100, 40),
                                                                 (3, 115, 50)])
def test_length_bounds_in_characters(difficulty, max_prompt, max_response):
  tasks = TaskWorld(seed=1, difficulty=difficulty).sample(3000, "train", unique=False)
  assert max(len(t.prompt) for t in tasks) <= max_prompt
  assert max(len(t.response) for t in tasks) <= max_response


def test_length_bounds_in_tokens_with_a_trained_tokenizer(tmp_path):
  from selfreward_jax.tokenizer import train_sentencepiece
  world = TaskWorld(seed=0)
  tok = train_sentencepiece(tokenizer_corpus(world, n=1500), tmp_path / "tok", 512)
  tasks = world.sample(1500, "eval", unique=False)
  assert max(len(tok.encode(t.prompt)) for t in tasks) <= 40
  assert max(len(tok.encode(t.response)) for t in tasks) <= 20
  for t in tasks[:200]:  # byte fallback: no unknown pieces anywhere
    assert tok.unk_id not in tok.encode(t.prompt + " " + t.response)


# ---- corpora -------------------------------------------------------------------------------------


@pytest.mark.parametrize("p_correct", [0.3, 0.7])
def test_pretraining_corpus_mixes_correct_and_wrong_at_the_ratio(p_correct):
  world = TaskWorld(seed=0)
  ex = pretraining_examples(world, 1000, seed=1, p_correct=p_correct, p_generic=0.05)
  kinds = collections.Counter(e["kind"] for e in ex)
  assert kinds["generic"] == 50 and kinds["correct"] == round(p_correct * 950)
  texts = pretraining_corpus(world, 1000, seed=1, p_correct=p_correct, p_generic=0.05)
  assert texts == [e["text"] for e in ex]
  n_right = n_wrong = 0
  families = set()
  for e in ex:
    if e["kind"] == "generic":
      assert "[INST]" not in e["text"] and "\n" not in e["text"]
      continue
    prompt, response = _split_chat(e["text"])
    task = parse_task(prompt)
    assert task is not None and task == Task.from_dict(e["task"])
    assert world.split_of(task) == "train"
    assert response.startswith("The answer is ")  # always the canonical format
    ok = task.is_correct(response)
    assert ok == (e["kind"] == "correct")
    n_right += ok
    n_wrong += not ok
    families.add(task.family)
  assert n_right == round(p_correct * 950) and n_wrong == 950 - n_right
  assert families == set(FAMILIES)
  assert pretraining_corpus(world, 1000, seed=2, p_correct=p_correct) != texts


def test_tokenizer_corpus_covers_templates_and_extra_texts():
  world = TaskWorld(seed=0)
  judge = "Review the user's question and the response below.\nScore: <points>"
  lines = tokenizer_corpus(world, n=300, extra_texts=[judge])
  assert all(line and "\n" not in line for line in lines)
  assert "Score: <points>" in lines
  assert "Review the user's question and the response below." in lines
  covered = set()
  for line in lines:
    if line.startswith("[INST]"):
      t = parse_task(_split_chat(line)[0])
      covered.add((t.family, t.template))
  assert covered == {(f, i) for f, fam in FAMILIES.items() for i in range(len(fam.templates))}
  text = " ".join(lines)
  for w in ("apple", "ZEBRA", "999", "Score"):
    assert w in text
  assert tokenizer_corpus(world, n=300, extra_texts=[judge]) == lines


# ---- seed data -----------------------------------------------------------------------------------


def test_ift_and_eft_are_disjoint_and_consistent():
  world = TaskWorld(seed=0)
  ift = ift_examples(world, 300, seed=0)
  eft = eft_candidates(world, 150, n_responses=4, seed=0)
  assert ift == ift_examples(world, 300, seed=0) and eft == eft_candidates(world, 150, 4, seed=0)
  assert not {e["prompt"] for e in ift} & {e["prompt"] for e in eft}
  assert len({e["prompt"] for e in ift}) == 300
  ids = [e["prompt_id"] for e in ift + eft]
  assert len(set(ids)) == len(ids) and ids[0].startswith("ift-") and ids[-1].startswith("eft-")
  for e in ift:
    t = task_of(e)
    assert t.prompt == e["prompt"] and t.score(e["response"]) == 1.0
  n_levels = []
  for e in eft:
    t = task_of(e)
    assert len(e["responses"]) == len(set(e["responses"])) == 4
    assert e["oracle_scores"] == [t.score(r) for r in e["responses"]]
    assert e["ranks"] == oracle_rank(e["oracle_scores"])
    assert world.split_of(t) == "eft"
    n_levels.append(len(set(e["ranks"])))
  assert sum(n >= 3 for n in n_levels) / len(n_levels) > 0.5  # rankings are informative
  ev = eft_candidates(world, 50, 4, seed=0, split="eval")
  assert all(world.split_of(task_of(e)) == "eval" for e in ev)


def test_candidate_responses_mix():
  world = TaskWorld(seed=0)
  scores = []
  for i, t in enumerate(world.sample(200, "eft")):
    cands = candidate_responses(t, random.Random(i), 4)
    assert cands == candidate_responses(t, i, 4)  # seed or Random: same result
    assert len(cands) == 4 and all(s == t.score(r) for r, s in cands)
    scores += [s for _, s in cands]
  c = collections.Counter("correct" if s == 1 else "right-unformatted" if s == 0.9 else
                          "zero" if s == 0 else "partial" for s in scores)
  assert all(c[k] > 40 for k in ("correct", "right-unformatted", "zero", "partial")), c
  many = candidate_responses(world.sample(1, "eft")[0], 0, 12)
  assert len(many) == len({r for r, _ in many}) >= 8


def test_oracle_rank():
  assert oracle_rank([0.9, 1.0, 0.9, 0.2]) == [1, 0, 1, 2]
  assert oracle_rank([0.5, 0.5]) == [0, 0]
  assert oracle_rank([]) == []
  assert oracle_rank([0.1, 0.3, 0.2]) == [2, 0, 1]
  assert rank_agreement([3, 5, 3, 1], [0.9, 1.0, 0.9, 0.2])
  assert not rank_agreement([3, 5, 4, 1], [0.9, 1.0, 0.9, 0.2])
  assert not rank_agreement([3, None, 3, 1], [0.9, 1.0, 0.9, 0.2])


def test_oracle_judgement_is_monotone_in_oracle_score():
  grid = [i / 200 for i in range(201)]
  points = [rubric_points(s) for s in grid]
  assert points == sorted(points) and points[0] == 0 and points[-1] == 5
  assert set(points) == set(range(6))
  world = TaskWorld(seed=0)
  pairs = []
  for i, t in enumerate(world.sample(150, "eval")):
    for r, s in candidate_responses(t, i, 8):
      text, pts = oracle_judgement(t, r)
      assert 0 < len(text.split()) <= 100 and "Score" not in text
      pairs.append((s, pts))
      if t.is_correct(r):
        assert pts >= 4
      assert (pts == 5) == (s == 1.0)
  pairs.sort()
  assert [p for _, p in pairs] == sorted(p for _, p in pairs)
  assert {p for _, p in pairs} == set(range(6))
  t = parse_task("What is 3 plus 4?")
  assert [oracle_judgement(t, r)[1] for r in
          ("", "banana", "The answer is 20.", "The answer is 8.", "7", "The answer is 7.")] == \
      [0, 0, 1, 3, 4, 5]
  assert "7" in oracle_judgement(t, "The answer is 8.")[0]  # names a correct answer


def test_prompt_validity_of_self_instructed_prompts():
  world = TaskWorld(seed=0, families=["add", "reverse"])
  train, held = world.sample(3, "train"), world.sample(2, "eval")
  other = TaskWorld(seed=0, families=["factor"]).sample(1, "train")
  prompts = ([t.prompt for t in train + held + other] + [train[0].prompt]
             + ["Write a poem about the sea.", "What is 3 plus?"])
  v = prompt_validity(prompts, world)
  assert (v["n"], v["n_valid"], v["n_unique"]) == (9, 7, 8)
  assert v["valid_fraction"] == pytest.approx(7 / 9)
  assert v["by_split"]["eval"] == 2 and v["other_family"] == 1 and sum(v["by_split"].values()) == 7
  assert v["by_family"]["factor"] == 1
  assert prompt_validity([])["valid_fraction"] == 0.0


def test_chat_text_layout():
  assert chat_text(" What is 1 plus 1? ", "The answer is 2. ") == \
      "[INST] What is 1 plus 1? [/INST] The answer is 2."
