"""Open Assistant (OASST1/OASST2) → seed data for the method (PAPER.md, "Seed data").

Input: OASST's flat message table (one row per message: message_id, parent_id, message_tree_id,
role "prompter"/"assistant", text, lang, rank, deleted, review_result, ...), read through
``datasets`` either by hub name (``"OpenAssistant/oasst2"``, on a machine with hub access) or from
local parquet / JSON / JSONL files. The nested ``*.trees.jsonl`` export (a ``prompt`` message with
``replies``) is flattened to the same rows.

  IFT  first turns in English whose assistant reply has human rank 0: {prompt_id, prompt, response}
  EFT  first turns in English with at least ``min_responses`` human-ranked assistant replies:
       {prompt_id, prompt, responses, ranks}, disjoint from the IFT prompts. The judge targets
       (justification + score) are generated later by the SFT baseline, which needs a model (see
       ``selfreward.eft``).

Messages that are deleted or failed review are ignored. Selection among eligible prompts is a
deterministic shuffle by ``seed``.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from selfreward_jax.data.jsonl import DataError, iter_jsonl

REQUIRED = ("message_id", "parent_id", "role", "text")


@dataclasses.dataclass(frozen=True)
class OasstConfig:
  source: str = "OpenAssistant/oasst2"   # hub name, or a local file / directory / glob
  split: str = "train"
  lang: str = "en"
  n_ift: int = 3200
  n_eft_prompts: int = 0                  # 0 = every eligible prompt
  min_responses: int = 2
  seed: int = 0


def _flatten_tree(node: Dict[str, Any], parent: Optional[str], tree_id: str, out: List[Dict]):
  row = {k: v for k, v in node.items() if k != "replies"}
  row.setdefault("parent_id", parent)
  row.setdefault("message_tree_id", tree_id)
  out.append(row)
  for child in node.get("replies") or []:
    _flatten_tree(child, node.get("message_id"), tree_id, out)


def _local_files(source: str) -> Optional[Tuple[str, List[str]]]:
  import glob
  if os.path.isdir(source):
    files = sorted(glob.glob(os.path.join(source, "*.parquet")) +
                   glob.glob(os.path.join(source, "*.jsonl")) + glob.glob(os.path.join(source, "*.json")))
  else:
    files = sorted(glob.glob(source))
  if not files:
    return None
  kinds = {"parquet" if f.endswith(".parquet") else "json" for f in files}
  if len(kinds) > 1:
    raise DataError(source, None, "mixes parquet and JSON files; point at one kind")
  return kinds.pop(), files


def load_messages(source: str, split: str = "train") -> List[Dict[str, Any]]:
  """OASST messages as flat dicts, from a hub name or local parquet/JSON(L) file(s)."""
  local = _local_files(source)
  looks_local = source.endswith((".parquet", ".json", ".jsonl")) or source.startswith((".", "/", "~")) \
      or source.count("/") > 1 or "*" in source
  if local is None and looks_local:
    raise DataError(source, None, "no such file or directory")
  if local is not None:
    kind, files = local
    if kind == "json":
      rows = _read_json_rows(files)
    else:
      import datasets
      rows = list(datasets.load_dataset("parquet", data_files=files, split="train"))
  else:
    import datasets
    rows = list(datasets.load_dataset(source, split=split))
  if rows and "prompt" in rows[0] and "message_id" not in rows[0]:
    flat: List[Dict] = []
    for r in rows:
      _flatten_tree(r["prompt"], None, r.get("message_tree_id") or r["prompt"].get("message_id"), flat)
    rows = flat
  return rows


def _missing_field(rec: Dict[str, Any]) -> Optional[str]:
  if "prompt" in rec:  # a nested trees-export record
    return None
  missing = [k for k in REQUIRED if k not in rec]
  return f"field {missing[0]!r}: missing" if missing else None


def _read_json_rows(files: Sequence[str]) -> List[Dict[str, Any]]:
  """JSONL rows with file:line errors (datasets' JSON reader hides where a bad line is)."""
  rows = []
  for path in files:
    for lineno, rec in iter_jsonl(path, validate=_missing_field):
      rec["_where"] = f"{path}:{lineno}"
      rows.append(rec)
  return rows


def _usable(m: Dict[str, Any]) -> bool:
  return not m.get("deleted", False) and m.get("review_result", True) is not False and \
      isinstance(m.get("text"), str) and m["text"].strip() != ""


def first_turns(messages: Iterable[Dict[str, Any]], lang: str = "en"
                ) -> List[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
  """(root prompt, its usable assistant replies) for every usable root prompt in ``lang``."""
  messages = list(messages)
  by_parent: Dict[str, List[Dict]] = {}
  for m in messages:
    for key in ("role", "message_id"):
      if key not in m:
        raise DataError(m.get("_where", "<oasst>"), None, "missing", field=key)
    if m.get("parent_id") is not None:
      by_parent.setdefault(m["parent_id"], []).append(m)
  out = []
  for m in messages:
    if m.get("parent_id") is None and m["role"] == "prompter" and m.get("lang") == lang and _usable(m):
      replies = [r for r in by_parent.get(m["message_id"], []) if r["role"] == "assistant" and _usable(r)]
      out.append((m, replies))
  out.sort(key=lambda pr: pr[0]["message_id"])
  return out


def build_seed_data(messages: Iterable[Dict[str, Any]], config: OasstConfig = OasstConfig()
                    ) -> Tuple[List[Dict], List[Dict], Dict[str, int]]:
  """IFT examples, EFT candidate groups (disjoint prompts) and counts.

  The IFT set takes up to ``n_ift`` prompts with a rank-0 reply; the EFT groups come from the
  remaining prompts with at least ``min_responses`` ranked replies (ties in rank are kept as ties).
  """
  turns = first_turns(messages, config.lang)
  rng = random.Random(config.seed)
  rng.shuffle(turns)
  ift, eft, used = [], [], set()
  counts = {"first_turns": len(turns), "ift": 0, "eft_prompts": 0, "eft_responses": 0}
  for prompt, replies in turns:
    best = [r for r in replies if r.get("rank") == 0]
    if len(ift) < config.n_ift and best:
      ift.append({"prompt_id": prompt["message_id"], "prompt": prompt["text"].strip(),
                  "response": best[0]["text"].strip()})
      used.add(prompt["message_id"])
  for prompt, replies in turns:
    if prompt["message_id"] in used:
      continue
    ranked = sorted((r for r in replies if r.get("rank") is not None), key=lambda r: (r["rank"], r["message_id"]))
    if len(ranked) < config.min_responses or len({r["rank"] for r in ranked}) < 2:
      continue
    if config.n_eft_prompts and len(eft) >= config.n_eft_prompts:
      break
    eft.append({"prompt_id": prompt["message_id"], "prompt": prompt["text"].strip(),
                "responses": [r["text"].strip() for r in ranked], "ranks": [int(r["rank"]) for r in ranked]})
  counts["ift"] = len(ift)
  counts["eft_prompts"] = len(eft)
  counts["eft_responses"] = sum(len(g["responses"]) for g in eft)
  return ift, eft, counts
