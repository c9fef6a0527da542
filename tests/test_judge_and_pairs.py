"""Judge-score parsing, judgement aggregation, preference pairs, templates."""

import pytest

from selfreward_jax.selfreward import judge, pairs, templates
from selfreward_jax.selfreward.judge import parse_judge_score
from selfreward_jax.selfreward.pairs import Candidate, build_pairs


@pytest.mark.parametrize("text,expected", [
    ("Score: 4", 4.0),
    ("score: 4.", 4.0),
    ("**Score:** 4", 4.0),
    ("**Score: 4**", 4.0),
    ("Score: **4**", 4.0),
    ("Score: 4/5", 4.0),
    ("Score: 4 / 5", 4.0),
    ("Score: 4 out of 5", 4.0),
    ("Score: 4 (out of 5)", 4.0),
    ("Score: 4 points", 4.0),
    ("Score = 3", 3.0),
    ("Score: four", 4.0),
    ("Score: 4.5", 4.5),
    ("Score: 0", 0.0),
    ("Score: 5.0/5", 5.0),
    ("SCORE: 2", 2.0),
    ("Final score: 3\n", 3.0),
    ("Score: 4.\nThank you for reading.", 4.0),
    ("Score: 4, a solid answer", 4.0),
    # the last marker wins (judges restate the scale first)
    ("Each criterion adds a point up to Score: 5. The reply is weak.\nScore: 1", 1.0),
    ("The first draft said Score: 2 but on reflection\nScore: 3", 3.0),
    ("Justification mentions score: 5 as the maximum.\n\n**Score:** 2/5", 2.0),
])
def test_parse_judge_score_accepts_variants(text, expected):
  assert parse_judge_score(text) == expected


@pytest.mark.parametrize("text", [
    "",
    "The reply is great, I give it 5 points.",   # no marker
    "Score:",                                     # marker without a value
    "Score: N/A",
    "Score: 6",                                   # out of range
    "Score: -1",
    "Score: 10",
    "Score: 4/10",                                # another scale
    "Score: 4 (out of 10)",
    "Score: 3-4",                                 # ambiguous
    "Score: 3 - 4",
    "Score: 3 or 4",
    "Score: 3 to 4",
    "Score: 3, 4",
    "Score: 4.5.6",
    "Score: 4 and a half",
    "Scores: 4",                                  # not the marker word
    "underscore: 4",
    "Score: 4\nActually the last one counts: Score: maybe",  # last marker unparsable
    "Score: five hundred",
])
def test_parse_judge_score_rejects(text):
  assert parse_judge_score(text) is None


def test_parse_judge_score_non_string():
  assert parse_judge_score(None) is None


def test_aggregate_averages_parsable_only():
  j = judge.aggregate(["ok. Score: 4", "garbage", "Score: 2"])
  assert j.scores == (4.0, None, 2.0) and j.mean == 3.0 and j.n_parsed == 2
  none = judge.aggregate(["no", "nope", "Score: 9"])
  assert none.mean is None  # never scored as 0
  stats = judge.parse_stats([j, none])
  assert stats == {"judgements": 6, "parsed": 2, "unparsable": 4, "parse_rate": 2 / 6,
                   "candidates_without_score": 1}
  hist = judge.score_histogram(judge.all_scores([j, none]))
  assert hist == {"0": 0, "1": 0, "2": 1, "3": 0, "4": 1, "5": 0, "none": 4}


def _c(i, score, resp=None, pid="p"):
  return Candidate(pid, i, resp if resp is not None else f"response {i}", score,
                   (f"judge {i}",), (score,))


def test_pairs_max_vs_min_with_provenance():
  groups = {
      "p0": ("prompt zero", [_c(0, 3.0), _c(1, 4.5), _c(2, 1.0), _c(3, 4.5)]),
      "p1": ("tie", [_c(0, 2.0), _c(1, 2.0)]),
      "p2": ("one scored", [_c(0, None), _c(1, 3.0)]),
      "p3": ("all unparsable", [_c(0, None), _c(1, None)]),
  }
  out, stats = build_pairs(groups)
  assert stats.to_dict() == {"prompts": 4, "pairs": 1, "dropped_tie": 1, "dropped_too_few_scored": 2,
                             "dropped_empty_response": 0, "dropped_identical": 0}
  (p,) = out
  assert (p["prompt_id"], p["chosen_id"], p["rejected_id"]) == ("p0", 1, 2)  # lower index wins ties
  assert p["chosen"] == "response 1" and p["rejected"] == "response 2"
  assert p["chosen_score"] == 4.5 and p["rejected_score"] == 1.0
  assert p["chosen_judge_texts"] == ["judge 1"] and p["rejected_judge_scores"] == [1.0]


def test_pairs_skip_empty_responses():
  out, stats = build_pairs({"p": ("x", [_c(0, 5.0, resp="  "), _c(1, 2.0)])})
  assert out == [] and stats.dropped_empty_response == 1


def test_pairs_with_identical_texts_are_dropped():
  out, stats = build_pairs({"p": ("x", [_c(0, 5.0, resp="same"), _c(1, 1.0, resp=" same "),
                                        _c(2, 3.0, resp="other")])})
  assert out == [] and stats.dropped_identical == 1


def test_length_control_prefers_short_chosen_and_long_rejected():
  cands = [_c(0, 5.0, "a" * 200), _c(1, 4.8, "b" * 20), _c(2, 1.0, "c" * 10), _c(3, 1.2, "d" * 90),
           _c(4, 3.0, "e")]
  plain, _ = build_pairs({"p": ("x", cands)})
  assert (plain[0]["chosen_id"], plain[0]["rejected_id"]) == (0, 2)
  lc, _ = build_pairs({"p": ("x", cands)}, length_control=0.1)
  assert (lc[0]["chosen_id"], lc[0]["rejected_id"]) == (1, 3)
  with pytest.raises(ValueError, match="length_control"):
    build_pairs({}, length_control=1.5)


def test_shipped_templates_load_and_render():
  t = templates.load_template("judge", kind="judge")
  text = judge.judge_prompt(t, " What is 2+2? ", "4 ")
  assert "What is 2+2?" in text and "<reply>4</reply>" in text and text.rstrip().endswith('"Score: <points>".')
  si = templates.load_template("self_instruct", kind="self_instruct")
  assert si.render(examples="Task: a").endswith("Task:")


def test_user_template_file_and_errors(tmp_path):
  good = tmp_path / "fig2.txt"
  good.write_text("Review {prompt} / {response}. Use {{braces}}.\n")
  t = templates.load_template(str(good), kind="judge")
  assert t.render(prompt="P", response="R") == "Review P / R. Use {braces}."
  bad = tmp_path / "bad.txt"
  bad.write_text("Only {prompt}\n")
  with pytest.raises(ValueError, match=r"bad.txt.*missing placeholder.*response"):
    templates.load_template(str(bad), kind="judge")
  extra = tmp_path / "extra.txt"
  extra.write_text("{prompt} {response} {rubric}")
  with pytest.raises(ValueError, match=r"extra.txt.*unknown placeholder.*rubric"):
    templates.load_template(str(extra), kind="judge")
  with pytest.raises(FileNotFoundError, match="no template named 'nope'"):
    templates.load_template("nope")
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    templates.load_template(str(tmp_path / "missing.txt"))
  broken = tmp_path / "broken.txt"
  broken.write_text("{prompt} {response} {")
  with pytest.raises(ValueError, match="broken.txt"):
    templates.load_template(str(broken), kind="judge")
