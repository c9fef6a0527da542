"""The ``seed`` and ``m0`` stages: seed data (IFT, EFT groups), tokenizer, and the base model M0.

Artifacts (under ``<workdir>/seed``)::

  tokenizer.model           SentencePiece model used by the whole run
  ift.jsonl                 {prompt_id, prompt, response}
  eft_groups_train.jsonl    {prompt_id, prompt, responses, ranks}  (judged by the SFT baseline in
  eft_groups_eval.jsonl      the ``eft`` stage; the eval split is kept unfiltered for evaluation)

M0 is ``<workdir>/models/M0``: a link file to an HF / Meta checkpoint (no copy of big weights), or
random params (the synthetic world then pretrains them, see ``synthetic``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, List

import numpy as np

from selfreward_jax.data import oasst
from selfreward_jax.data.jsonl import DataError, atomic_open, iter_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

LINK_FILE = "link.json"


def _split_groups(groups: List[Dict], fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(groups))
  n_eval = int(round(fraction * len(groups)))
  eval_ids = set(order[:n_eval].tolist())
  train = [g for i, g in enumerate(groups) if i not in eval_ids]
  evals = [g for i, g in enumerate(groups) if i in eval_ids]
  return train, evals


def _read_ift(path: str) -> List[Dict]:
  out = []
  for line, rec in iter_jsonl(path, required={"prompt": str, "response": str}):
    out.append({"prompt_id": str(rec.get("prompt_id", f"ift-{line}")), "prompt": rec["prompt"],
                "response": rec["response"]})
  return out


def _validate_group(rec: Dict[str, Any]) -> str | None:
  if not isinstance(rec["responses"], list) or not all(isinstance(r, str) for r in rec["responses"]):
    return "field 'responses': expected a list of strings"
  if not isinstance(rec["ranks"], list) or not all(isinstance(r, int) for r in rec["ranks"]):
    return "field 'ranks': expected a list of integers (0 = best)"
  if len(rec["responses"]) != len(rec["ranks"]):
    return f"'responses' has {len(rec['responses'])} items but 'ranks' has {len(rec['ranks'])}"
  if len(rec["responses"]) < 2:
    return "field 'responses': a group needs at least 2 ranked responses"
  return None


def _read_groups(path: str) -> List[Dict]:
  out = []
  for line, rec in iter_jsonl(path, required={"prompt": str, "responses": list, "ranks": list},
                              validate=_validate_group):
    out.append({"prompt_id": str(rec.get("prompt_id", f"eft-{line}")), "prompt": rec["prompt"],
                "responses": rec["responses"], "ranks": rec["ranks"]})
  return out


def _tokenizer_source(run) -> str:
  init = run.cfg.init
  if init.tokenizer:
    return init.tokenizer
  for ckpt in (init.hf_checkpoint, init.meta_checkpoint):
    if ckpt:
      return os.path.join(ckpt, "tokenizer.model")
  return ""


def build(run) -> Dict[str, Any]:
  """Writes the seed artifacts for ``run.cfg.data.source``."""
  cfg = run.cfg
  seed_dir = run.path("seed")
  os.makedirs(seed_dir, exist_ok=True)
  source = cfg.data.source
  if source == "synthetic":
    from selfreward_jax.synthetic import pipeline
    return pipeline.build_seed(run)
  tok_src = _tokenizer_source(run)
  if not tok_src or not os.path.isfile(tok_src):
    raise FileNotFoundError(f"tokenizer not found: {tok_src or '(none given)'}; set "
                            "config.init.tokenizer to a SentencePiece tokenizer.model")
  if source == "oasst":
    messages = oasst.load_messages(cfg.data.oasst.source, cfg.data.oasst.split)
    ift, groups, counts = oasst.build_seed_data(messages, cfg.data.oasst)
  else:  # files
    if not cfg.data.ift_path or not cfg.data.eft_path:
      raise DataError("config.data", None, "source='files' needs ift_path and eft_path")
    ift, groups = _read_ift(cfg.data.ift_path), _read_groups(cfg.data.eft_path)
    overlap = {g["prompt"].strip() for g in groups} & {e["prompt"].strip() for e in ift}
    if overlap:
      raise DataError(cfg.data.eft_path, None, f"{len(overlap)} EFT prompts also appear in the IFT "
                      f"file {cfg.data.ift_path} (e.g. {sorted(overlap)[0][:60]!r}); they must be disjoint")
    counts = {"ift": len(ift), "eft_prompts": len(groups)}
  train, evals = _split_groups(groups, cfg.data.eft_eval_fraction, cfg.seed)
  with open(tok_src, "rb") as src, atomic_open(os.path.join(seed_dir, "tokenizer.model"), "wb") as f:
    shutil.copyfileobj(src, f)
  write_jsonl(os.path.join(seed_dir, "ift.jsonl"), ift)
  write_jsonl(os.path.join(seed_dir, "eft_groups_train.jsonl"), train)
  write_jsonl(os.path.join(seed_dir, "eft_groups_eval.jsonl"), evals)
  if cfg.data.eft_examples_path:
    examples = [{"prompt": r["prompt"], "response": r["response"]}
                for _, r in iter_jsonl(cfg.data.eft_examples_path, required={"prompt": str, "response": str})]
    write_jsonl(os.path.join(seed_dir, "eft_given.jsonl"), examples)
    counts["eft_examples_given"] = len(examples)
  return {**counts, "ift": len(ift), "eft_train_groups": len(train), "eft_eval_groups": len(evals)}


def build_m0(run) -> Dict[str, Any]:
  """M0: a link to the configured checkpoint, or random init (+ pretraining for synthetic)."""
  init = run.cfg.init
  out = run.model_dir("M0")
  for kind, path in (("hf", init.hf_checkpoint), ("meta", init.meta_checkpoint)):
    if path:
      if not os.path.isdir(path):
        raise FileNotFoundError(f"config.init.{kind}_checkpoint: {path} does not exist")
      os.makedirs(out, exist_ok=True)
      write_json(os.path.join(out, LINK_FILE), {"kind": kind, "path": os.path.abspath(path)})
      return {"source": kind, "path": os.path.abspath(path)}
  if run.cfg.data.source == "synthetic":
    from selfreward_jax.synthetic import pipeline
    return pipeline.build_m0(run)
  import jax
  from selfreward_jax import sharding as shd
  params = shd.init_sharded_params(run.cfg.model, jax.random.key(run.cfg.seed), run.mesh)
  run.save("M0", run.cfg.model, params)
  return {"source": "random", "params": run.cfg.model.num_params()}


def load_linked(path: str, mesh):
  """Loads a model directory holding ``link.json`` (an HF or Meta checkpoint elsewhere)."""
  with open(os.path.join(path, LINK_FILE), encoding="utf-8") as f:
    link = json.load(f)
  if link["kind"] == "meta":
    from selfreward_jax.checkpoint.meta import load_meta_checkpoint
    return load_meta_checkpoint(link["path"], mesh=mesh)
  from selfreward_jax.checkpoint.hf import load_hf_checkpoint
  return load_hf_checkpoint(link["path"], mesh=mesh)
