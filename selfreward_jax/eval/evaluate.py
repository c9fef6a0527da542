"""Evaluation of a run's models on the paper's two axes, plus diagnostics.

Instruction following (held-out prompts):

* synthetic world: every model answers ``seed/eval_tasks.jsonl`` (greedy by default); the oracle
  grades each response: ``accuracy`` (exactly correct, format ignored), ``mean_score`` (the
  oracle's partial credit in [0, 1]), both overall and per family;
* other sources (OASST, files): there is no oracle; the models answer ``EvalConfig.prompts_path``
  (default: the EFT eval prompts) and the responses are exported in AlpacaEval's model-outputs
  format (``eval/alpaca_eval/<model>.json``: a list of ``{"instruction", "output", "generator"}``);
* head to head: win / tie / loss of model A against model B on the same prompts (M1 vs the SFT
  baseline, M_t vs M1, M_t vs M_{t-1}), judged by the oracle's scores (synthetic) and, separately,
  by a model judge (default the last model, with the run's judge template): a win is a strictly
  higher score; prompts where either response has no parsable judge score are counted as
  ``unscored`` and left out of the rates.

Reward modelling (``seed/eft_groups_eval.jsonl``: several responses per prompt with reference
ranks: the oracle's in the synthetic world, human ranks for OASST/files): each model judges every
response with the run's judge template; ``eval.reward_metrics`` of the mean scores against the
ranks (pairwise accuracy, 5-best, exact match, Spearman, Kendall).

Diagnostics per model: mean response length (characters), judge parse rate and score histogram.

The paper is silent on how its evaluation samples; we answer greedily and judge greedily with one
judgement per response by default (deterministic, and three times cheaper than the loop's K=3
sampled judgements); ``EvalConfig`` switches to the loop's sampled, averaged judging.

Artifacts (``<workdir>/eval``): ``<model>/responses.jsonl``, ``<model>/judgements.jsonl`` (reward
modelling), ``<model>/h2h_judge.jsonl`` (the model judge's scores of this model's responses),
``<model>/metrics.json`` (written last: a model with it is done and skipped on a rerun),
``head_to_head.json``, ``loop.json`` (per-iteration diagnostics measured with the oracle: validity
of the self-instructed prompts, candidate accuracy, and how often the pair the model chose is
really the better response). Sampling work is chunked like the loop's stages, so a killed
evaluation resumes. The loop itself never reads any of this.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from selfreward_jax.data.jsonl import read_json, read_jsonl, write_json, write_jsonl
from selfreward_jax.eval.reward_metrics import reward_metrics
from selfreward_jax.selfreward import judge as judge_lib
from selfreward_jax.selfreward.config import EvalConfig, SamplingConfig

log = logging.getLogger(__name__)

EVAL_DIR = "eval"


def eval_config(run) -> EvalConfig:
  """The run's ``EvalConfig`` (``config.eval``)."""
  return run.cfg.eval


# ---- pure functions ------------------------------------------------------------------------------

def oracle_accuracy(records: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
  """Accuracy and mean oracle score of graded responses, overall and per family.

  ``records``: dicts with ``oracle_score`` (float in [0, 1]), ``correct`` (bool) and optionally
  ``family``. Returns ``{"n", "accuracy", "mean_score", "by_family": {family: {"n", "accuracy",
  "mean_score"}}}`` (``accuracy``/``mean_score`` None when there are no records).
  """
  def summary(rs):
    n = len(rs)
    return {"n": n, "accuracy": sum(bool(r["correct"]) for r in rs) / n if n else None,
            "mean_score": float(np.mean([r["oracle_score"] for r in rs])) if n else None}

  fams: Dict[str, List[Mapping[str, Any]]] = {}
  for r in records:
    fams.setdefault(str(r.get("family", "all")), []).append(r)
  return {**summary(list(records)), "by_family": {f: summary(rs) for f, rs in sorted(fams.items())}}


def head_to_head(scores_a: Sequence[Optional[float]], scores_b: Sequence[Optional[float]],
                 tol: float = 1e-9) -> Dict[str, Any]:
  """Win / tie / loss of A against B, prompt by prompt.

  A wins a prompt when its score exceeds B's by more than ``tol``; a prompt where either score is
  None (no parsable judgement) is ``unscored`` and not in the rates. Returns counts ``wins, ties,
  losses, unscored, n`` and fractions ``win_rate, tie_rate, loss_rate`` of the scored prompts
  (None when none is scored).
  """
  if len(scores_a) != len(scores_b):
    raise ValueError(f"head_to_head: {len(scores_a)} scores for A vs {len(scores_b)} for B")
  w = t = l = u = 0
  for a, b in zip(scores_a, scores_b):
    if a is None or b is None:
      u += 1
    elif a > b + tol:
      w += 1
    elif b > a + tol:
      l += 1
    else:
      t += 1
    scored = w + t + l
  scored = w + t + l
  rate = lambda k: k / scored if scored else None
  return {"wins": w, "ties": t, "losses": l, "unscored": u, "n": len(scores_a),
          "win_rate": rate(w), "tie_rate": rate(t), "loss_rate": rate(l)}


def alpaca_eval_records(instructions: Sequence[str], outputs: Sequence[Optional[str]],
                        generator: str) -> List[Dict[str, str]]:
  """AlpacaEval's model-outputs format: ``[{"instruction", "output", "generator"}, ...]``
  (a missing output is written as the empty string, so the lists stay aligned)."""
  if len(instructions) != len(outputs):
    raise ValueError(f"alpaca_eval_records: {len(instructions)} instructions vs {len(outputs)} outputs")
  return [{"instruction": i, "output": o or "", "generator": generator}
          for i, o in zip(instructions, outputs)]


def write_alpaca_eval(path: str, instructions: Sequence[str], outputs: Sequence[Optional[str]],
                      generator: str) -> str:
  """Writes ``alpaca_eval_records`` as a JSON list (atomically); returns the path."""
  write_json(path, alpaca_eval_records(instructions, outputs, generator))
  return path


def response_diagnostics(responses: Sequence[Optional[str]]) -> Dict[str, Any]:
  """Mean length in characters (and words) of the responses; how many are empty/missing."""
  texts = [r or "" for r in responses]
  return {"responses": len(texts),
          "mean_length_chars": float(np.mean([len(t) for t in texts])) if texts else 0.0,
          "mean_length_words": float(np.mean([len(t.split()) for t in texts])) if texts else 0.0,
          "empty": sum(not t.strip() for t in texts)}


def judge_diagnostics(scores: Sequence[Optional[float]]) -> Dict[str, Any]:
  """Parse rate and histogram of individual judge scores (None = unparsable)."""
  n = len(scores)
  parsed = sum(s is not None for s in scores)
  return {"judgements": n, "parsed": parsed, "parse_rate": parsed / n if n else None,
          "score_histogram": judge_lib.score_histogram(scores),
          "mean_score": float(np.mean([s for s in scores if s is not None])) if parsed else None}


def comparisons(models: Sequence[str]) -> List[Tuple[str, str]]:
  """The head-to-head pairs (A, B) among ``models``: M1 vs SFT; for t >= 2, M_t vs M1 and
  M_t vs M_{t-1}."""
  have = set(models)
  out = []
  if "M1" in have and "SFT" in have:
    out.append(("M1", "SFT"))
  t = 2
  while f"M{t}" in have:
    for b in (f"M{t - 1}", "M1"):
      if b in have and (f"M{t}", b) not in out:
        out.append((f"M{t}", b))
    t += 1
  return out


# ---- run-level evaluation --------------------------------------------------------------------------

def run_models(run) -> List[str]:
  """The run's models in order (M0, SFT, M1, ..., M{T+1}) that exist on disk."""
  names = ["M0", "SFT"] + [f"M{t}" for t in range(1, run.cfg.loop.iterations + 2)]
  return [n for n in names if os.path.isdir(run.model_dir(n))]


def _is_synthetic(run) -> bool:
  return run.cfg.data.source == "synthetic" and os.path.exists(run.path("seed", "eval_tasks.jsonl"))


def eval_prompts(run, cfg: EvalConfig) -> List[Dict[str, Any]]:
  """The instruction-following prompts: ``[{"prompt_id", "prompt", ("task", "family")}]``."""
  if _is_synthetic(run):
    recs = read_jsonl(run.path("seed", "eval_tasks.jsonl"))
  elif cfg.prompts_path:
    recs = _read_prompt_file(cfg.prompts_path)
  else:
    seen, recs = set(), []
    for g in read_jsonl(run.require(run.path("seed", "eft_groups_eval.jsonl"), "seed")):
      if g["prompt"] not in seen:
        seen.add(g["prompt"])
        recs.append({"prompt_id": g["prompt_id"], "prompt": g["prompt"]})
  return recs[:cfg.max_prompts] if cfg.max_prompts else recs


def _read_prompt_file(path: str) -> List[Dict[str, Any]]:
  if path.endswith(".json"):
    with open(path, encoding="utf-8") as f:
      rows = json.load(f)
  else:
    rows = read_jsonl(path)
  out = []
  for i, r in enumerate(rows):
    text = r if isinstance(r, str) else (r.get("prompt") or r.get("instruction"))
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"{path}: item {i} has no 'prompt' or 'instruction' string")
    out.append({"prompt_id": str(r.get("prompt_id", f"p{i}")) if isinstance(r, dict) else f"p{i}",
                "prompt": text})
  return out


def _sampling(temperature: float, max_new_tokens: int) -> SamplingConfig:
  return SamplingConfig(temperature=temperature, top_p=1.0 if temperature == 0 else 0.9,
                        max_new_tokens=max_new_tokens)


def _judge_texts(run, model: str, items: Sequence[Tuple[str, str]], cfg: EvalConfig,
                 parts_dir: str, seed: int) -> List[Dict[str, Any]]:
  """``model`` judges each (prompt, response); returns ``{"judge_texts", "judge_scores",
  "score"}`` per item, chunked under ``parts_dir``."""
  from selfreward_jax.selfreward.loop import stage_seed  # pylint: disable=g-import-not-at-top
  from selfreward_jax.selfreward.templates import load_template
  template = load_template(run.cfg.loop.judge_template, kind="judge")
  sampling = _sampling(cfg.judge_temperature, run.cfg.loop.judge_sampling.max_new_tokens)
  del stage_seed

  def work(lo, hi):
    batch = items[lo:hi]
    ids = [run._chat_ids(judge_lib.judge_prompt(template, p, r)) if r.strip() else [] for p, r in batch]
    todo = [i for i, x in enumerate(ids) if x]
    outs = run._generate_text(model, [ids[i] for i in todo], cfg.num_judgements, sampling, seed) \
        if todo else []
    by_i = dict(zip(todo, outs))
    recs = []
    for i in range(len(batch)):
      texts = by_i.get(i)
      if not texts:  # empty response or judge input too long: no score
        recs.append({"judge_texts": [], "judge_scores": [], "score": None})
      else:
        recs.append(judge_lib.aggregate(texts).to_dict())
    return recs

  return run._chunked("eval", parts_dir, len(items), cfg.chunk_size, work)


def _grade(task_dict: Mapping[str, Any], response: str) -> Dict[str, Any]:
  from selfreward_jax.synthetic.tasks import Task  # pylint: disable=g-import-not-at-top
  g = Task.from_dict(task_dict).grade(response)
  return {"oracle_score": g.score, "correct": g.correct, "canonical": g.canonical}


def evaluate_model(run, name: str, cfg: EvalConfig) -> Dict[str, Any]:
  """Responses on the eval prompts (graded by the oracle when there is one) and reward modelling
  on the EFT eval groups for model ``name``; writes ``eval/<name>/`` and returns its metrics."""
  from selfreward_jax.selfreward.loop import stage_seed  # pylint: disable=g-import-not-at-top
  out_dir = run.path(EVAL_DIR, name)
  metrics_path = os.path.join(out_dir, "metrics.json")
  if os.path.exists(metrics_path):
    return read_json(metrics_path)
  os.makedirs(out_dir, exist_ok=True)
  synthetic = _is_synthetic(run)
  prompts = eval_prompts(run, cfg)
  max_new = cfg.response_max_new_tokens or run.cfg.loop.candidate_sampling.max_new_tokens
  sampling = _sampling(cfg.response_temperature, max_new)
  seed = stage_seed(run.cfg.seed, "eval.responses")

  def work(lo, hi):
    batch = prompts[lo:hi]
    outs = run._generate_text(name, [run._chat_ids(p["prompt"]) for p in batch], 1, sampling, seed)
    recs = []
    for p, o in zip(batch, outs):
      rec = {"prompt_id": p["prompt_id"], "prompt": p["prompt"], "response": o[0] if o else None}
      if "task" in p:
        rec.update(family=p.get("family"), **_grade(p["task"], rec["response"] or ""))
      recs.append(rec)
    return recs

  responses = run._chunked("eval", os.path.join(out_dir, "responses.parts"), len(prompts),
                           cfg.chunk_size, work)
  write_jsonl(os.path.join(out_dir, "responses.jsonl"), responses)
  metrics: Dict[str, Any] = {"model": name, "prompts": len(prompts),
                             "responses": response_diagnostics([r["response"] for r in responses])}
  if synthetic:
    metrics["instruction_following"] = oracle_accuracy(responses)
  elif cfg.alpaca_eval:
    path = write_alpaca_eval(run.path(EVAL_DIR, "alpaca_eval", f"{name}.json"),
                             [r["prompt"] for r in responses], [r["response"] for r in responses],
                             generator=f"selfreward_jax-{name}")
    metrics["alpaca_eval_outputs"] = path

  groups_path = run.path("seed", "eft_groups_eval.jsonl")
  groups = read_jsonl(groups_path) if os.path.exists(groups_path) else []
  if groups:
    items = [(g["prompt"], r) for g in groups for r in g["responses"]]
    judged = _judge_texts(run, name, items, cfg, os.path.join(out_dir, "judgements.parts"),
                          stage_seed(run.cfg.seed, "eval.judge"))
    recs, k = [], 0
    for g in groups:
      for j in range(len(g["responses"])):
        recs.append({"prompt_id": g["prompt_id"], "response_index": j, "rank": g["ranks"][j],
                     **judged[k]})
        k += 1
    write_jsonl(os.path.join(out_dir, "judgements.jsonl"), recs)
    scores, k = [], 0
    for g in groups:
      scores.append([judged[k + j]["score"] for j in range(len(g["responses"]))])
      k += len(g["responses"])
    metrics["reward_modelling"] = reward_metrics(scores, [g["ranks"] for g in groups])
    metrics["judge"] = judge_diagnostics([s for r in judged for s in r["judge_scores"]])
    metrics["judge"]["responses_without_score"] = sum(r["score"] is None for r in judged)
  write_json(metrics_path, metrics)
  return metrics


def head_to_head_all(run, models: Sequence[str], cfg: EvalConfig) -> Dict[str, Any]:
  """Head to head for ``comparisons(models)``: by the oracle (synthetic) and by the model judge."""
  from selfreward_jax.selfreward.loop import stage_seed  # pylint: disable=g-import-not-at-top
  pairs = comparisons(models)
  judge = cfg.judge_model or (models[-1] if models else "")
  responses = {m: read_jsonl(run.path(EVAL_DIR, m, "responses.jsonl"))
               for m in {x for p in pairs for x in p}}
  judge_scores: Dict[str, List[Optional[float]]] = {}
  for m in sorted(responses):
    path = run.path(EVAL_DIR, m, f"h2h_judge.{judge}.jsonl")
    if os.path.exists(path):
      recs = read_jsonl(path)
    else:
      items = [(r["prompt"], r["response"] or "") for r in responses[m]]
      recs = _judge_texts(run, judge, items, cfg, run.path(EVAL_DIR, m, f"h2h_judge.{judge}.parts"),
                          stage_seed(run.cfg.seed, "eval.h2h"))
      write_jsonl(path, recs)
    judge_scores[m] = [r["score"] for r in recs]
  out: Dict[str, Any] = {"judge_model": judge, "comparisons": []}
  for a, b in pairs:
    ra, rb = responses[a], responses[b]
    if [r["prompt_id"] for r in ra] != [r["prompt_id"] for r in rb]:
      raise ValueError(f"head to head {a} vs {b}: the models answered different prompts")
    row: Dict[str, Any] = {"a": a, "b": b, "judge": head_to_head(judge_scores[a], judge_scores[b])}
    if "oracle_score" in ra[0]:
      row["oracle"] = head_to_head([r["oracle_score"] for r in ra], [r["oracle_score"] for r in rb])
    out["comparisons"].append(row)
  write_json(run.path(EVAL_DIR, "head_to_head.json"), out)
  return out


def loop_diagnostics(run) -> List[Dict[str, Any]]:
  """Per iteration, what the loop did, measured with the oracle afterwards (synthetic only):
  validity of the self-instructed prompts, oracle accuracy of the candidates, and the oracle's
  verdict on each preference pair (chosen really better / tie / worse)."""
  if not _is_synthetic(run):
    return []
  from selfreward_jax.synthetic.tasks import parse_task  # pylint: disable=g-import-not-at-top
  from selfreward_jax.synthetic.world import prompt_validity
  from selfreward_jax.synthetic.pipeline import load_world
  world, _ = load_world(run)
  rows = []
  for t in range(1, run.cfg.loop.iterations + 1):
    row: Dict[str, Any] = {"iteration": t}
    p = run.idir(t, "prompts.jsonl")
    if os.path.exists(p):
      row["prompts"] = prompt_validity([r["prompt"] for r in read_jsonl(p)], world)
    c = run.idir(t, "candidates.jsonl")
    if os.path.exists(c):
      graded = []
      for r in read_jsonl(c):
        task = parse_task(r["prompt"])
        if task is not None:
          graded += [task.score(x) for x in r["candidates"]]
      row["candidates"] = {"graded": len(graded),
                           "accuracy": float(np.mean([s >= 0.9 for s in graded])) if graded else None,
                           "mean_oracle_score": float(np.mean(graded)) if graded else None}
    pp = run.idir(t, "pairs.jsonl")
    if os.path.exists(pp):
      deltas = []
      for r in read_jsonl(pp):
        task = parse_task(r["prompt"])
        if task is not None:
          deltas.append(task.score(r["chosen"]) - task.score(r["rejected"]))
      n = len(deltas)
      row["pairs"] = {"graded": n,
                      "chosen_better": sum(d > 1e-9 for d in deltas) / n if n else None,
                      "tie": sum(abs(d) <= 1e-9 for d in deltas) / n if n else None,
                      "chosen_worse": sum(d < -1e-9 for d in deltas) / n if n else None}
    rows.append(row)
  return rows


def run_eval(run) -> Dict[str, Any]:
  """The ``eval`` stage: every model, head to head, loop diagnostics; returns a short summary."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  cfg = eval_config(run)
  models = list(cfg.models) or run_models(run)
  if not models:
    raise FileNotFoundError(f"no model to evaluate in {run.path('models')}")
  results = {}
  for name in tqdm(models, desc="eval", dynamic_ncols=True):
    results[name] = evaluate_model(run, name, cfg)
  h2h = head_to_head_all(run, models, cfg)
  loop_rows = loop_diagnostics(run)
  write_json(run.path(EVAL_DIR, "loop.json"), loop_rows)
  summary: Dict[str, Any] = {"models": models, "judge_model": h2h["judge_model"]}
  for name, m in results.items():
    summary[name] = {
        "accuracy": m.get("instruction_following", {}).get("accuracy"),
        "pairwise_accuracy": m.get("reward_modelling", {}).get("pairwise_accuracy")}
  return summary
