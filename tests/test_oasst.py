"""OASST → IFT / EFT seed data, on a small OASST-format fixture written here."""

import json

import pytest

from selfreward_jax.data import oasst
from selfreward_jax.data.jsonl import DataError


def _tree(i, lang="en", ranks=(0, 1, 2), deleted_reply=None):
  root = f"t{i}"
  rows = [{"message_id": root, "parent_id": None, "message_tree_id": root, "role": "prompter",
           "text": f"Question number {i}?", "lang": lang, "rank": None, "deleted": False,
           "review_result": True}]
  for j, rk in enumerate(ranks):
    rows.append({"message_id": f"{root}-a{j}", "parent_id": root, "message_tree_id": root,
                 "role": "assistant", "text": f"Answer {j} to {i}", "lang": lang, "rank": rk,
                 "deleted": deleted_reply == j, "review_result": True})
    rows.append({"message_id": f"{root}-a{j}-f", "parent_id": f"{root}-a{j}", "message_tree_id": root,
                 "role": "prompter", "text": "follow-up", "lang": lang, "rank": None,
                 "deleted": False, "review_result": True})
  return rows


def _fixture():
  rows = []
  for i in range(10):
    rows += _tree(i)
  rows += _tree(10, lang="de")
  rows += _tree(11, ranks=(0,))                 # one reply: IFT-eligible only
  rows += _tree(12, ranks=(None, None))         # unranked
  rows += _tree(13, deleted_reply=0)            # the rank-0 reply was deleted
  return rows


def test_ift_and_eft_are_disjoint_and_follow_the_rules():
  cfg = oasst.OasstConfig(n_ift=5, seed=0)
  ift, eft, counts = oasst.build_seed_data(_fixture(), cfg)
  assert counts["first_turns"] == 13  # en roots only
  assert len(ift) == 5 and all(ex["response"].startswith("Answer 0 ") for ex in ift)
  ift_ids = {ex["prompt_id"] for ex in ift}
  assert not ift_ids & {g["prompt_id"] for g in eft}
  for g in eft:
    assert len(g["responses"]) >= 2 and g["ranks"] == sorted(g["ranks"])
    assert "t10" != g["prompt_id"] and g["prompt_id"] not in ("t11", "t12")
  assert "t13" not in ift_ids  # no usable rank-0 reply
  assert counts["eft_prompts"] == len(eft) and counts["ift"] == 5
  again = oasst.build_seed_data(_fixture(), cfg)
  assert again[0] == ift and again[1] == eft  # deterministic for a seed


def test_reads_local_jsonl_parquet_and_trees(tmp_path):
  rows = _fixture()
  jl = tmp_path / "oasst.jsonl"
  jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  from_jsonl = oasst.load_messages(str(jl))
  assert len(from_jsonl) == len(rows)
  import datasets
  pq = tmp_path / "pq"
  pq.mkdir()
  datasets.Dataset.from_list(rows).to_parquet(str(pq / "train.parquet"))
  from_parquet = oasst.load_messages(str(pq))
  ift_a = oasst.build_seed_data(from_jsonl, oasst.OasstConfig(n_ift=4))[0]
  ift_b = oasst.build_seed_data(from_parquet, oasst.OasstConfig(n_ift=4))[0]
  assert ift_a == ift_b
  # nested trees export
  def nest(mid, by_parent, by_id):
    node = dict(by_id[mid])
    node["replies"] = [nest(c, by_parent, by_id) for c in by_parent.get(mid, [])]
    return node
  by_id = {r["message_id"]: r for r in rows}
  by_parent = {}
  for r in rows:
    if r["parent_id"]:
      by_parent.setdefault(r["parent_id"], []).append(r["message_id"])
  trees = [{"message_tree_id": r["message_id"], "prompt": nest(r["message_id"], by_parent, by_id)}
           for r in rows if r["parent_id"] is None]
  tr = tmp_path / "trees.jsonl"
  tr.write_text("\n".join(json.dumps(t) for t in trees) + "\n")
  assert oasst.build_seed_data(oasst.load_messages(str(tr)), oasst.OasstConfig(n_ift=4))[0] == ift_a


def test_malformed_input_names_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(_fixture()[0]) + "\n{not json\n")
  with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
    oasst.load_messages(str(bad))
  missing = tmp_path / "missing_field.jsonl"
  missing.write_text(json.dumps({"message_id": "x", "parent_id": None, "text": "hi"}) + "\n")
  with pytest.raises(DataError, match=r"missing_field.jsonl:1: field 'role': missing"):
    oasst.load_messages(str(missing))
  with pytest.raises(DataError, match="no such file"):
    oasst.load_messages(str(tmp_path / "nope.parquet"))
