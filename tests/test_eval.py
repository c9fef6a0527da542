"""Evaluation pieces: oracle accuracy with partial credit, head-to-head counting, AlpacaEval export
format, comparison plan, diagnostics, and the report table."""

import json

import pytest

from selfreward_jax.eval import evaluate, report


def test_oracle_accuracy_overall_and_per_family():
  recs = [{"family": "add", "oracle_score": 1.0, "correct": True},
          {"family": "add", "oracle_score": 0.6, "correct": False},
          {"family": "sort", "oracle_score": 0.9, "correct": True},
          {"family": "sort", "oracle_score": 0.0, "correct": False}]
  out = evaluate.oracle_accuracy(recs)
  assert out["n"] == 4 and out["accuracy"] == pytest.approx(0.5)
  assert out["mean_score"] == pytest.approx((1.0 + 0.6 + 0.9 + 0.0) / 4)
  assert out["by_family"]["add"] == {"n": 2, "accuracy": 0.5, "mean_score": pytest.approx(0.8)}
  assert out["by_family"]["sort"]["mean_score"] == pytest.approx(0.45)
  empty = evaluate.oracle_accuracy([])
  assert empty["n"] == 0 and empty["accuracy"] is None and empty["by_family"] == {}


def test_oracle_accuracy_grades_real_tasks():
  from selfreward_jax.synthetic import TaskWorld
  task = TaskWorld(0, ["add"]).sample(1, "eval")[0]
  good = evaluate._grade(task.to_dict(), task.response)
  bare = evaluate._grade(task.to_dict(), task.reference)
  wrong = evaluate._grade(task.to_dict(), "The answer is -999.")
  assert good == {"oracle_score": 1.0, "correct": True, "canonical": True}
  assert bare["correct"] and bare["oracle_score"] == pytest.approx(0.9)  # partial: not canonical
  assert not wrong["correct"] and wrong["oracle_score"] < 0.8


def test_head_to_head_counts_wins_ties_losses_and_unscored():
  a = [5.0, 3.0, 2.0, None, 4.0, 1.0]
  b = [4.0, 3.0, 2.5, 5.0, None, 0.0]
  h = evaluate.head_to_head(a, b)
  assert (h["wins"], h["ties"], h["losses"], h["unscored"], h["n"]) == (2, 1, 1, 2, 6)
  assert h["win_rate"] == pytest.approx(0.5) and h["tie_rate"] == pytest.approx(0.25)
  assert h["loss_rate"] == pytest.approx(0.25)
  swapped = evaluate.head_to_head(b, a)
  assert (swapped["wins"], swapped["losses"]) == (h["losses"], h["wins"])
  none = evaluate.head_to_head([None], [1.0])
  assert none["win_rate"] is None and none["unscored"] == 1
  with pytest.raises(ValueError, match="2 scores for A vs 1"):
    evaluate.head_to_head([1.0, 2.0], [1.0])


def test_alpaca_eval_export_format(tmp_path):
  recs = evaluate.alpaca_eval_records(["Say hi.", "Add 1 and 2."], ["Hi!", None], "M2")
  assert recs == [{"instruction": "Say hi.", "output": "Hi!", "generator": "M2"},
                  {"instruction": "Add 1 and 2.", "output": "", "generator": "M2"}]
  path = evaluate.write_alpaca_eval(str(tmp_path / "out" / "M2.json"), ["Say hi."], ["Hi!"], "M2")
  with open(path) as f:
    data = json.load(f)
  assert isinstance(data, list) and set(data[0]) == {"instruction", "output", "generator"}
  with pytest.raises(ValueError, match="2 instructions vs 1 outputs"):
    evaluate.alpaca_eval_records(["a", "b"], ["x"], "g")


def test_comparisons_plan():
  assert evaluate.comparisons(["M0", "SFT", "M1", "M2", "M3"]) == [
      ("M1", "SFT"), ("M2", "M1"), ("M3", "M2"), ("M3", "M1")]
  assert evaluate.comparisons(["M0", "M1", "M2"]) == [("M2", "M1")]
  assert evaluate.comparisons(["M0", "M1"]) == []


def test_diagnostics():
  d = evaluate.response_diagnostics(["abc", "", None, "a b c d"])
  assert d["responses"] == 4 and d["empty"] == 2
  assert d["mean_length_chars"] == pytest.approx((3 + 0 + 0 + 7) / 4)
  j = evaluate.judge_diagnostics([5.0, None, 4.0, 4.4])
  assert j["parse_rate"] == pytest.approx(0.75) and j["score_histogram"]["4"] == 2
  assert j["score_histogram"]["none"] == 1 and j["mean_score"] == pytest.approx(13.4 / 3)


def test_prompt_file_formats(tmp_path):
  p = tmp_path / "p.jsonl"
  p.write_text('{"instruction": "Do A."}\n{"prompt": "Do B.", "prompt_id": "b"}\n')
  assert evaluate._read_prompt_file(str(p)) == [{"prompt_id": "p0", "prompt": "Do A."},
                                                {"prompt_id": "b", "prompt": "Do B."}]
  q = tmp_path / "q.json"
  q.write_text(json.dumps(["Do C."]))
  assert evaluate._read_prompt_file(str(q)) == [{"prompt_id": "p0", "prompt": "Do C."}]
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([{"text": "x"}]))
  with pytest.raises(ValueError, match="item 0 has no 'prompt' or 'instruction'"):
    evaluate._read_prompt_file(str(bad))


def test_report_table_and_formatting():
  models = {
      "M0": {"instruction_following": {"accuracy": 0.1, "mean_score": 0.3},
             "reward_modelling": {"pairwise_accuracy": 0.25, "five_best": None, "exact_match": 0.0,
                                  "spearman": 0.01, "kendall_tau": -0.02},
             "judge": {"parse_rate": 1.0}, "responses": {"mean_length_chars": 18.25}},
      "M1": {"responses": {"mean_length_chars": 20.0}},
  }
  rows = report.table_rows(models, {"M1": 42})
  assert [r["model"] for r in rows] == ["M0", "M1"]
  assert set(rows[0]) == set(report.TABLE_COLUMNS)
  assert rows[1]["pairs"] == 42 and rows[1]["oracle_accuracy"] is None
  text = report.format_table(rows)
  assert "oracle acc %" in text and "10.0" in text and "-0.020" in text and "18.2" in text
  md = report.format_table(rows, markdown=True).splitlines()
  assert md[0].startswith("| model |") and md[1].startswith("|---") and len(md) == 4
  assert md[3].split("|")[1].strip() == "M1" and md[3].rstrip().endswith("| 42 |")
