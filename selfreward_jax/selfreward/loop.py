"""The self-rewarding method as resumable stages over one workdir.

Stages, in order (``stage_names``)::

  seed              IFT examples and EFT ranked groups (train / eval split), the tokenizer
  m0                the base model M0 (an HF/Meta checkpoint, or random init [+ pretraining])
  sft_baseline      SFT of M0 on IFT only: the model that writes the EFT targets
  eft               the SFT baseline judges the EFT train responses; groups whose score ranking
                    agrees with the human ranking become EFT examples
  sft               SFT of M0 on IFT + EFT -> M1
  iter{t}.prompts     M_t (or a fixed model) writes new prompts, Self-Instruct filters applied
  iter{t}.candidates  N candidate responses per prompt from M_t
  iter{t}.judge       K judgements per candidate by M_t, averaged over the parsable ones
  iter{t}.pairs       chosen = best, rejected = worst mean score, ties dropped
  iter{t}.dpo         DPO from M_t with M_t as the reference -> M_{t+1}
  eval              every model: instruction following (oracle or AlpacaEval export), reward
                    modelling against the reference ranking, diagnostics (``eval.evaluate``)
  report            report.json, report.md and plots (``eval.report``)

Every stage writes its artifacts atomically and then a ``stages/<name>.json`` marker with its
stats; a rerun skips stages with a marker. Sampling stages work in chunks of prompts (each chunk
an atomic file), training stages resume from their orbax checkpoints, so a killed run resumes
where it stopped and, at a fixed seed, ends with the same artifacts as an uninterrupted run
(samples depend only on (seed, prompt, sample index), see ``sampling.sampler``).

The loop never sees an oracle: pairs come from the model's own judgements only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from selfreward_jax.configlib import to_config
from selfreward_jax.data.jsonl import read_json, read_jsonl, write_json, write_jsonl
from selfreward_jax.selfreward import judge as judge_lib
from selfreward_jax.selfreward import pairs as pairs_lib
from selfreward_jax.selfreward import self_instruct as si
from selfreward_jax.selfreward.config import RunConfig
from selfreward_jax.selfreward.templates import load_template

log = logging.getLogger(__name__)

PAUSE_ENV = "SELFREWARD_JAX_PAUSE_AT"
PROMPT_MODEL = "prompt_model"  # the name of a fixed prompt-writing model (LoopConfig.prompt_model)


class StageError(RuntimeError):
  """A stage cannot run (missing input artifact, bad stage name, ...)."""


class DegenerateIterationError(RuntimeError):
  """An iteration produced nothing to train on (e.g. zero pairs); its stats are in the workdir."""


def stage_seed(seed: int, name: str) -> int:
  """A stable per-stage seed (independent of Python's hash randomisation)."""
  return (zlib.crc32(f"{seed}:{name}".encode()) & 0x7FFFFFFF)


def pause_point(stage: str, unit: Any) -> None:
  """Test hook: with ``SELFREWARD_JAX_PAUSE_AT=<stage>:<unit>`` the process announces itself on
  stdout and blocks here, so a test can kill -9 it inside the stage."""
  want = os.environ.get(PAUSE_ENV)
  if want and want == f"{stage}:{unit}":
    print(f"PAUSED_AT {stage}:{unit}", flush=True)
    sys.stdout.flush()
    while True:
      time.sleep(3600)


def stage_names(iterations: int) -> List[str]:
  names = ["seed", "m0", "sft_baseline", "eft", "sft"]
  for t in range(1, iterations + 1):
    names += [f"iter{t}.{s}" for s in ("prompts", "candidates", "judge", "pairs", "dpo")]
  return names + ["eval", "report"]


def select_stages(spec: str, iterations: int) -> List[str]:
  """``"all"`` or a comma list of stage names / prefixes (``"iter1"`` = all of iteration 1)."""
  names = stage_names(iterations)
  if not spec or spec == "all":
    return names
  chosen = []
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    hits = [n for n in names if n == part or n.startswith(part + ".")]
    if not hits:
      raise StageError(f"--stages: unknown stage {part!r}; stages are {names}")
    chosen += [h for h in hits if h not in chosen]
  return [n for n in names if n in chosen]


def _chunks(n: int, size: int) -> List[Tuple[int, int]]:
  return [(i, min(i + size, n)) for i in range(0, n, size)]


class SelfRewardingRun:
  """One run of the method in ``workdir``. ``run(stages)`` executes stages in order.

  Hooks for the seed data and M0 of the synthetic world are injected (``seed_builder``,
  ``m0_builder``) so the loop itself stays dataset-agnostic.
  """

  def __init__(self, config: RunConfig, workdir: str, *, mesh=None):
    self.cfg = config
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self._mesh = mesh
    self._sample_mesh = None
    self._tokenizer = None
    self._sampler = None
    self._current: Optional[Tuple[str, Any, Any]] = None  # (model name, config, params)

  # ---- paths and markers ----------------------------------------------------------------------
  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def marker(self, stage: str) -> str:
    return self.path("stages", f"{stage}.json")

  def done(self, stage: str) -> bool:
    return os.path.exists(self.marker(stage))

  def _finish(self, stage: str, stats: Dict[str, Any]) -> Dict[str, Any]:
    write_json(self.marker(stage), {"stage": stage, "stats": stats})
    return stats

  def require(self, path: str, stage: str) -> str:
    if not os.path.exists(path):
      raise StageError(f"{path} is missing: run stage {stage!r} first (--stages={stage})")
    return path

  @property
  def mesh(self):
    if self._mesh is None:
      from selfreward_jax import sharding as shd
      self._mesh = shd.make_mesh(self.cfg.mesh)
    return self._mesh

  # ---- models and tokenizer --------------------------------------------------------------------
  def model_dir(self, name: str) -> str:
    return self.path("models", name)

  def tokenizer(self):
    if self._tokenizer is None:
      from selfreward_jax.tokenizer import Tokenizer
      path = self.require(self.path("seed", "tokenizer.model"), "seed")
      self._tokenizer = Tokenizer(path)
    return self._tokenizer

  @property
  def sample_mesh(self):
    """The sampler's mesh: ``config.sampler.mesh`` with ``separate_mesh``, else the training mesh."""
    if not self.cfg.sampler.separate_mesh:
      return self.mesh
    if self._sample_mesh is None:
      from selfreward_jax import sharding as shd
      self._sample_mesh = shd.make_mesh(self.cfg.sampler.mesh)
    return self._sample_mesh

  def load(self, name: str, mesh=None):
    """``(config, params)`` of a model of this run (M0, SFT, M1, ...) on ``mesh`` (default: the
    training mesh), cached while current (a cached model on another mesh is resharded)."""
    mesh = self.mesh if mesh is None else mesh
    if self._current is not None and self._current[0] == name:
      config, params = self._current[1], self._current[2]
      if _mesh_of(params) != mesh:
        import jax
        from selfreward_jax import sharding as shd
        self._current = None
        params = jax.device_put(params, shd.param_shardings(config, mesh), donate=True)
        self._current = (name, config, params)
      return config, params
    from selfreward_jax.checkpoint import params as ckpt
    path = self.cfg.loop.prompt_model if name == PROMPT_MODEL else self.model_dir(name)
    if not os.path.isdir(path):
      raise StageError(f"model {name} is missing ({path}); run the stage that makes it first")
    self._current = None  # release the previous model before loading
    from selfreward_jax.selfreward import seed_data
    if os.path.isfile(os.path.join(path, seed_data.LINK_FILE)):
      config, params = seed_data.load_linked(path, mesh)
    else:
      config, params = ckpt.load_model(path, mesh)
    self._current = (name, config, params)
    return config, params

  def save(self, name: str, config, params) -> None:
    from selfreward_jax.checkpoint import params as ckpt
    ckpt.save_model(self.model_dir(name), config, params)
    self._current = (name, config, params)

  def sampler(self, config, params):
    from selfreward_jax.sampling.sampler import Sampler
    sc = self.cfg.sampler
    if self._sampler is None or self._sampler.config != config:
      self._sampler = Sampler(config, params, max_concurrent=sc.max_concurrent,
                              max_prefill_length=sc.max_prefill_length,
                              max_decode_length=sc.max_decode_length, mesh=self.sample_mesh)
    else:
      self._sampler.update_params(params)
    return self._sampler

  def _generate_text(self, name: str, prompts_ids: Sequence[Sequence[int]], num_samples: int,
                     sampling, seed: int) -> List[Optional[List[str]]]:
    """Decoded samples per prompt; None for a prompt that does not fit the sampler (longer than
    ``max_prefill_length`` or than the cache allows): never cut; each stage records and counts them."""
    config, params = self.load(name, self.sample_mesh)
    tok = self.tokenizer()
    sampler = self.sampler(config, params)
    sc = self.cfg.sampler
    limit = min(sc.max_prefill_length, sc.max_decode_length - sampling.max_new_tokens)
    fits = [i for i, p in enumerate(prompts_ids) if 0 < len(p) <= limit]
    out: List[Optional[List[str]]] = [None] * len(prompts_ids)
    if fits:
      gen = sampler.generate([prompts_ids[i] for i in fits], num_samples=num_samples,
                             stop_ids=(tok.eos_id,), seed=seed, **sampling.kwargs())
      for i, per in zip(fits, gen):
        out[i] = [tok.decode(s).strip() for s in per]
    return out

  def _chat_ids(self, text: str) -> List[int]:
    return self.tokenizer().chat_prompt(text, system=self.cfg.loop.system_prompt)

  def _chunked(self, stage: str, parts_dir: str, n: int, size: int,
               work: Callable[[int, int], List[Dict]]) -> List[Dict]:
    """Runs ``work(lo, hi)`` for every chunk not yet on disk; returns all records in order."""
    os.makedirs(parts_dir, exist_ok=True)
    records: List[Dict] = []
    for k, (lo, hi) in enumerate(_chunks(n, size)):
      part = os.path.join(parts_dir, f"part-{k:05d}.jsonl")
      if os.path.exists(part):
        records += read_jsonl(part)
        continue
      pause_point(stage, k)
      recs = work(lo, hi)
      write_jsonl(part, recs)
      records += recs
    return records

  def close(self) -> None:
    """Releases the sampler and the cached model (device memory)."""
    self._sampler = None
    self._current = None

  def summary_rows(self) -> List[Dict[str, Any]]:
    """Per-iteration stats for the end-of-run table."""
    rows = []
    for t in range(1, self.cfg.loop.iterations + 1):
      p = self.idir(t, "stats.json")
      if not os.path.exists(p):
        continue
      st = read_json(p)
      rows.append({
          "iteration": t,
          "prompts_kept": st.get("prompts", {}).get("kept"),
          "prompt_attempts": st.get("prompts", {}).get("attempts"),
          "parse_rate": st.get("judge", {}).get("parse_rate"),
          "pairs": st.get("pairs", {}).get("pairs"),
          "mean_candidate_chars": st.get("candidates", {}).get("mean_length_chars"),
          "dpo_reward_accuracy": st.get("dpo", {}).get("final_reward_accuracy"),
      })
    return rows

  def print_summary(self, file=None) -> None:
    """Per-iteration stats, then (when the ``report`` stage has run) the report's model table."""
    self._print_iterations(file)
    if os.path.exists(self.path("report.json")):
      from selfreward_jax.eval import report
      rep = read_json(self.path("report.json"))
      print(f"\n{report.format_table(rep['table'])}\n(report: {self.path('report.md')})",
            file=file or sys.stdout)

  def _print_iterations(self, file=None) -> None:
    rows = self.summary_rows()
    if not rows:
      return
    cols = list(rows[0])
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    widths = [max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(fmt(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in rows]
    print("\n".join(lines), file=file or sys.stdout)

  # ---- stages ------------------------------------------------------------------------------------
  def run(self, stages: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    names = list(stages) if stages is not None else stage_names(self.cfg.loop.iterations)
    from selfreward_jax import distributed
    distributed.check_same("the stages to run", names)  # multi-host: every process runs the same
    write_json(self.path("config.json"), to_config(self.cfg))
    results = {}
    for name in names:
      if self.done(name):
        log.info("stage %s: done already, skipping", name)
        results[name] = read_json(self.marker(name))["stats"]
        continue
      log.info("stage %s: starting", name)
      pause_point(name, "start")
      start = time.perf_counter()
      stats = self._dispatch(name)
      stats["seconds"] = round(time.perf_counter() - start, 3)
      results[name] = self._finish(name, stats)
      log.info("stage %s: finished in %.1f s", name, stats["seconds"])
    return results

  def _dispatch(self, name: str) -> Dict[str, Any]:
    if "." in name:
      it, stage = name.split(".", 1)
      t = int(it[len("iter"):])
      return getattr(self, f"stage_{stage}")(t)
    return getattr(self, f"stage_{name}")()

  # seed ------------------------------------------------------------------------------------------
  def stage_seed(self) -> Dict[str, Any]:
    from selfreward_jax.selfreward import seed_data
    return seed_data.build(self)

  def stage_m0(self) -> Dict[str, Any]:
    from selfreward_jax.selfreward import seed_data
    return seed_data.build_m0(self)

  # SFT -------------------------------------------------------------------------------------------
  def _sft(self, stage: str, init: str, out: str, data_paths: Sequence[str]) -> Dict[str, Any]:
    from selfreward_jax.train.sft import train_sft
    merged = self.path("train", f"{stage}.data.jsonl")
    records = [r for p in data_paths for r in read_jsonl(p)]
    if not records:
      raise DegenerateIterationError(f"stage {stage}: no training examples in {list(data_paths)}")
    write_jsonl(merged, records)
    config, params = self.load(init)
    self._current = None  # the trainer consumes (donates) the params
    sft_cfg = self.cfg.sft.replace(train=self.cfg.sft.train.replace(seed=stage_seed(self.cfg.seed, stage)))
    params = train_sft(config, params, self.tokenizer(), merged, sft_cfg,
                       workdir=self.path("train", stage), mesh=self.mesh,
                       on_step=lambda step, m: pause_point(stage, step))
    self.save(out, config, params)
    return {"records": len(records), **self._train_summary(stage)}  # kept/skipped: "data"

  def _train_summary(self, stage: str) -> Dict[str, Any]:
    metrics_path = self.path("train", stage, "metrics.jsonl")
    out: Dict[str, Any] = {}
    if os.path.exists(metrics_path):
      rows = read_jsonl(metrics_path)
      if rows:
        last = rows[-1]
        out = {"steps": last.get("step"), **{f"final_{k}": v for k, v in last.items()
                                            if isinstance(v, (int, float)) and k != "step"}}
    stats_path = self.path("train", stage, "data_stats.json")
    if os.path.exists(stats_path):
      out["data"] = read_json(stats_path)
    return out

  def _eft_given(self) -> bool:
    return os.path.exists(self.path("seed", "eft_given.jsonl"))

  def stage_sft_baseline(self) -> Dict[str, Any]:
    if self._eft_given():
      return {"skipped": "EFT examples were given (config.data.eft_examples_path)"}
    return self._sft("sft_baseline", "M0", "SFT", [self.require(self.path("seed", "ift.jsonl"), "seed")])

  def stage_sft(self) -> Dict[str, Any]:
    return self._sft("sft", "M0", "M1", [self.require(self.path("seed", "ift.jsonl"), "seed"),
                                         self.require(self.path("seed", "eft_train.jsonl"), "eft")])

  # EFT -------------------------------------------------------------------------------------------
  def stage_eft(self) -> Dict[str, Any]:
    """The SFT baseline writes a judgement for every EFT train response; a group is kept where the
    ranking by its scores equals the human ranking (unparsable scores reject the group)."""
    if self._eft_given():
      given = read_jsonl(self.path("seed", "eft_given.jsonl"))
      write_jsonl(self.path("seed", "eft_train.jsonl"), given)
      return {"skipped": "EFT examples were given", "examples": len(given)}
    groups = read_jsonl(self.require(self.path("seed", "eft_groups_train.jsonl"), "seed"))
    template = load_template(self.cfg.loop.judge_template, kind="judge")
    flat = [(g, j) for g in groups for j in range(len(g["responses"]))]
    seed = stage_seed(self.cfg.seed, "eft")

    def work(lo, hi):
      batch = flat[lo:hi]
      texts = [judge_lib.judge_prompt(template, g["prompt"], g["responses"][j]) for g, j in batch]
      outs = self._generate_text("SFT", [self._chat_ids(t) for t in texts], 1,
                                 self.cfg.loop.judge_sampling, seed)
      return [{"prompt_id": g["prompt_id"], "response_index": j, "judge_prompt": t,
               "judgement": o[0] if o else None, "too_long": o is None,
               "score": judge_lib.parse_judge_score(o[0]) if o else None}
              for (g, j), t, o in zip(batch, texts, outs)]

    judged = self._chunked("eft", self.path("seed", "eft.parts"), len(flat),
                           self.cfg.loop.chunk_size * self.cfg.loop.num_candidates, work)
    by_group: Dict[str, List[Dict]] = {}
    for r in judged:
      by_group.setdefault(r["prompt_id"], []).append(r)
    examples, kept, unparsable = [], 0, 0
    for g in groups:
      rs = sorted(by_group[g["prompt_id"]], key=lambda r: r["response_index"])
      scores = [r["score"] for r in rs]
      unparsable += sum(s is None for s in scores)
      if any(s is None for s in scores) or not _ranking_agrees(scores, g["ranks"]):
        continue
      kept += 1
      examples += [{"prompt": r["judge_prompt"], "response": r["judgement"], "score": r["score"]}
                   for r in rs]
    thinned = 0
    if self.cfg.data.eft_thin_most_common and examples:
      examples, thinned = _thin_most_common(examples, np.random.default_rng(seed))
    write_jsonl(self.path("seed", "eft_train.jsonl"), examples)
    scores = [r["score"] for r in judged]
    return {"groups": len(groups), "groups_kept": kept, "examples": len(examples),
            "judgements": len(judged), "unparsable": unparsable,
            "too_long": sum(r["too_long"] for r in judged), "thinned": thinned,
            "score_histogram": judge_lib.score_histogram(scores),
            "train_score_histogram": judge_lib.score_histogram([e["score"] for e in examples])}

  # iteration stages ----------------------------------------------------------------------------
  def idir(self, t: int, *parts: str) -> str:
    return self.path(f"iter{t}", *parts)

  def stage_prompts(self, t: int) -> Dict[str, Any]:
    """M_t (or the fixed ``prompt_model``) writes new prompts from 8-shot prompts, in rounds of
    ``chunk_size`` attempts; each round's raw generations are stored, so a resumed stage replays
    them through the (deterministic) filters and continues."""
    lc = self.cfg.loop
    stage = f"iter{t}.prompts"
    seed_prompts = [r["prompt"] for r in read_jsonl(self.require(self.path("seed", "ift.jsonl"), "seed"))]
    earlier = []
    for s in range(1, t):
      p = self.idir(s, "prompts.jsonl")
      if os.path.exists(p):
        earlier += [r["prompt"] for r in read_jsonl(p)]
    template = load_template(lc.self_instruct_template, kind="self_instruct")
    example_t = load_template(lc.self_instruct_example_template, kind="self_instruct_example")
    filt = si.PromptFilter(seed_prompts + earlier, lc.filters)
    model = f"M{t}" if lc.prompt_model == "self" else PROMPT_MODEL
    accepted: List[Dict] = []
    parts = self.idir(t, "prompts.parts")
    os.makedirs(parts, exist_ok=True)
    base_seed = stage_seed(self.cfg.seed, stage)
    rounds = 0
    for r in range(lc.max_prompt_rounds):
      if len(accepted) >= lc.num_prompts:
        break
      part = os.path.join(parts, f"round-{r:05d}.jsonl")
      if os.path.exists(part):
        raw = read_jsonl(part)
      else:
        pause_point(stage, r)
        rng = np.random.default_rng([base_seed, r])
        generated = [a["prompt"] for a in accepted]
        few_shots = [si.few_shot_prompt(template, example_t, seed_prompts, generated, rng)
                     for _ in range(lc.chunk_size)]
        texts = self._self_instruct(model, few_shots, seed=base_seed + r)
        raw = [{"round": r, "index": i, "generation": g} for i, g in enumerate(texts)]
        write_jsonl(part, raw)
      rounds += 1
      for rec in raw:
        if len(accepted) >= lc.num_prompts:
          break
        text = si.extract_prompt(rec["generation"])
        ok, _ = filt.add(text)
        if ok:
          accepted.append({"prompt_id": f"it{t}-p{len(accepted):06d}", "prompt": text,
                           "source": {"round": rec["round"], "index": rec["index"]}})
    write_jsonl(self.idir(t, "prompts.jsonl"), accepted)
    stats = {"attempts": sum(filt.counts.values()), "kept": len(accepted), "rounds": rounds,
             "filters": dict(filt.counts)}
    log.info("iter%d prompts: kept %d of %d; filtered: %s", t, len(accepted), stats["attempts"],
             {k: v for k, v in filt.counts.items() if k != "accepted"})
    if not accepted:
      raise DegenerateIterationError(f"iteration {t}: no new prompt survived the filters "
                                     f"({dict(filt.counts)}); see {self.idir(t)}")
    return stats

  def _self_instruct(self, model: str, few_shots: Sequence[str], seed: int) -> List[str]:
    tok = self.tokenizer()
    ids = [[tok.bos_id] + tok.encode(f) for f in few_shots]
    outs = self._generate_text(model, ids, 1, self.cfg.loop.prompt_sampling, seed)
    return [o[0] if o else "" for o in outs]

  def stage_candidates(self, t: int) -> Dict[str, Any]:
    lc = self.cfg.loop
    prompts = read_jsonl(self.require(self.idir(t, "prompts.jsonl"), f"iter{t}.prompts"))
    seed = stage_seed(self.cfg.seed, f"iter{t}.candidates")

    def work(lo, hi):
      batch = prompts[lo:hi]
      outs = self._generate_text(f"M{t}", [self._chat_ids(p["prompt"]) for p in batch],
                                 lc.num_candidates, lc.candidate_sampling, seed)
      return [{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "candidates": o or [],
               "too_long": o is None} for p, o in zip(batch, outs)]

    recs = self._chunked(f"iter{t}.candidates", self.idir(t, "candidates.parts"), len(prompts),
                         lc.chunk_size, work)
    write_jsonl(self.idir(t, "candidates.jsonl"), recs)
    all_c = [c for r in recs for c in r["candidates"]]
    empty = sum(not c.strip() for c in all_c)
    return {"prompts": len(recs), "candidates": len(all_c), "empty": empty,
            "prompts_too_long": sum(r["too_long"] for r in recs),
            "mean_length_chars": float(np.mean([len(c) for c in all_c])) if all_c else 0.0}

  def stage_judge(self, t: int) -> Dict[str, Any]:
    lc = self.cfg.loop
    recs = read_jsonl(self.require(self.idir(t, "candidates.jsonl"), f"iter{t}.candidates"))
    template = load_template(lc.judge_template, kind="judge")
    flat = [(r, j) for r in recs for j in range(len(r["candidates"]))]
    seed = stage_seed(self.cfg.seed, f"iter{t}.judge")

    def work(lo, hi):
      batch = flat[lo:hi]
      out = []
      todo = [(r, j) for r, j in batch if r["candidates"][j].strip()]
      texts = self._generate_text(
          f"M{t}", [self._chat_ids(judge_lib.judge_prompt(template, r["prompt"], r["candidates"][j]))
                    for r, j in todo], lc.num_judgements, lc.judge_sampling, seed) if todo else []
      by_key = {(r["prompt_id"], j): ts for (r, j), ts in zip(todo, texts)}
      for r, j in batch:
        key = (r["prompt_id"], j)
        ts = by_key.get(key)
        if ts is None:  # empty candidate, or a judge input too long to fit: no score
          out.append({"prompt_id": r["prompt_id"], "candidate_id": j, "judge_texts": [],
                      "judge_scores": [], "score": None, "empty": key not in by_key,
                      "too_long": key in by_key})
          continue
        jd = judge_lib.aggregate(ts)
        out.append({"prompt_id": r["prompt_id"], "candidate_id": j, **jd.to_dict(), "empty": False,
                    "too_long": False})
      return out

    judged = self._chunked(f"iter{t}.judge", self.idir(t, "judge.parts"), len(flat),
                           lc.chunk_size * lc.num_candidates, work)
    write_jsonl(self.idir(t, "judgements.jsonl"), judged)
    scores = [s for r in judged for s in r["judge_scores"]]
    n_texts = len(scores)
    parsed = sum(s is not None for s in scores)
    return {"candidates": len(judged), "judgements": n_texts, "parsed": parsed,
            "parse_rate": parsed / n_texts if n_texts else 0.0,
            "candidates_without_score": sum(r["score"] is None for r in judged),
            "empty_candidates": sum(r["empty"] for r in judged),
            "judge_inputs_too_long": sum(r["too_long"] for r in judged),
            "score_histogram": judge_lib.score_histogram(scores),
            "mean_score_histogram": judge_lib.score_histogram([r["score"] for r in judged])}

  def stage_pairs(self, t: int) -> Dict[str, Any]:
    recs = read_jsonl(self.require(self.idir(t, "candidates.jsonl"), f"iter{t}.candidates"))
    judged = read_jsonl(self.require(self.idir(t, "judgements.jsonl"), f"iter{t}.judge"))
    by_key = {(j["prompt_id"], j["candidate_id"]): j for j in judged}
    groups = {}
    for r in recs:
      cands = []
      for i, text in enumerate(r["candidates"]):
        j = by_key[(r["prompt_id"], i)]
        cands.append(pairs_lib.Candidate(r["prompt_id"], i, text, j["score"], tuple(j["judge_texts"]),
                                         tuple(j["judge_scores"])))
      groups[r["prompt_id"]] = (r["prompt"], cands)
    pairs, pstats = pairs_lib.build_pairs(groups, self.cfg.loop.length_control)
    write_jsonl(self.idir(t, "pairs.jsonl"), pairs)
    stats = pstats.to_dict()
    if pairs:
      stats["mean_chosen_length_chars"] = float(np.mean([len(p["chosen"]) for p in pairs]))
      stats["mean_rejected_length_chars"] = float(np.mean([len(p["rejected"]) for p in pairs]))
    self._write_iteration_stats(t, pairs=stats)
    if not pairs:
      raise DegenerateIterationError(
          f"iteration {t}: zero preference pairs ({stats}); not training on nothing. "
          f"Look at {self.idir(t, 'judgements.jsonl')} (parse rate, score histogram).")
    return stats

  def stage_dpo(self, t: int) -> Dict[str, Any]:
    from selfreward_jax.data import batching
    from selfreward_jax.train.dpo import train_dpo
    stage = f"iter{t}.dpo"
    pairs_path = self.require(self.idir(t, "pairs.jsonl"), f"iter{t}.pairs")
    config, params = self.load(f"M{t}")
    self._current = None  # consumed by the trainer; M_t stays on disk as the reference's source
    dpo_cfg = self.cfg.dpo.replace(train=self.cfg.dpo.train.replace(seed=stage_seed(self.cfg.seed, stage)))
    try:
      params = train_dpo(config, params, self.tokenizer(), pairs_path, dpo_cfg,
                         workdir=self.path("train", stage), mesh=self.mesh,
                         on_step=lambda step, m: pause_point(stage, step))
    except batching.NothingToTrainError as e:
      raise DegenerateIterationError(f"iteration {t}: {e}") from None
    self.save(f"M{t + 1}", config, params)
    summary = self._train_summary(stage)
    self._write_iteration_stats(t, dpo=summary)
    return summary

  # evaluation ------------------------------------------------------------------------------------
  def stage_eval(self) -> Dict[str, Any]:
    """Both axes for every model of the run (``eval.evaluate``); uses the oracle, never feeds
    the loop."""
    from selfreward_jax.eval import evaluate
    return evaluate.run_eval(self)

  def stage_report(self) -> Dict[str, Any]:
    """``report.json``, ``report.md`` and plots from the eval artifacts (``eval.report``)."""
    from selfreward_jax.eval import report
    return report.write_report(self)

  def _write_iteration_stats(self, t: int, **extra) -> None:
    """iter{t}/stats.json: prompts kept per filter, candidates, parse rate, score histogram,
    pairs, mean response length (merged from the stage markers so far)."""
    stats: Dict[str, Any] = {}
    for s in ("prompts", "candidates", "judge", "pairs", "dpo"):
      m = self.marker(f"iter{t}.{s}")
      if os.path.exists(m):
        stats[s] = read_json(m)["stats"]
    stats.update(extra)
    write_json(self.idir(t, "stats.json"), stats)


def _mesh_of(params):
  """The mesh of a param pytree's first leaf (None if it is not on a named sharding)."""
  import jax
  leaf = jax.tree.leaves(params)[0]
  return getattr(getattr(leaf, "sharding", None), "mesh", None)


def _ranking_agrees(scores: Sequence[float], ranks: Sequence[int]) -> bool:
  """True when ordering by score (higher = better) equals the human ranking, ties included."""
  for a in range(len(scores)):
    for b in range(a + 1, len(scores)):
      if np.sign(scores[a] - scores[b]) != np.sign(ranks[b] - ranks[a]):
        return False
  return True


def _thin_most_common(examples: List[Dict], rng: np.random.Generator) -> Tuple[List[Dict], int]:
  """Drops random examples of the most common score down to the second most common's count."""
  by_score: Dict[Any, List[int]] = {}
  for i, e in enumerate(examples):
    by_score.setdefault(e["score"], []).append(i)
  if len(by_score) < 2:
    return examples, 0
  counts = sorted(((len(v), k) for k, v in by_score.items()), key=lambda x: (-x[0], str(x[1])))
  (n1, top), (n2, _) = counts[0], counts[1]
  drop = set(rng.choice(by_score[top], n1 - n2, replace=False).tolist())
  return [e for i, e in enumerate(examples) if i not in drop], len(drop)
