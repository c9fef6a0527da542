"""The run's report: ``report.json``, ``report.md`` and PNG plots in the workdir.

Built from the ``eval`` stage's artifacts (``eval/<model>/metrics.json``, ``eval/head_to_head.json``,
``eval/loop.json``), the iterations' ``iter{t}/stats.json`` and the stage markers (timings).

One row per model (M0, SFT baseline, M1, ..., M{T+1}; ``TABLE_COLUMNS``): instruction following
(oracle accuracy and mean oracle score, synthetic world only), reward modelling on the EFT eval set
(pairwise accuracy, 5-best, exact match, Spearman, Kendall), judge parse rate, mean response length,
and the preference pairs the model made when it was M_t of iteration t.

Plots (matplotlib, Agg backend) under ``<workdir>/plots``: ``axes.png`` (both axes per model),
``lengths.png`` (response lengths per model and per iteration), ``score_histograms.png`` (the
judge's scores per model on the EFT eval set and per iteration in the loop) and, in the synthetic
world, ``families.png`` (oracle accuracy per family and model).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from selfreward_jax.data.jsonl import atomic_open, read_json, write_json
from selfreward_jax.eval.evaluate import EVAL_DIR, run_models

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("model", "oracle_accuracy", "mean_oracle_score", "pairwise_accuracy", "five_best",
                 "exact_match", "spearman", "kendall_tau", "parse_rate", "mean_length_chars",
                 "pairs")
"""Columns of the report table, in order."""

_HEADERS = {"model": "model", "oracle_accuracy": "oracle acc %", "mean_oracle_score": "oracle score",
            "pairwise_accuracy": "judge pairwise %", "five_best": "5-best %",
            "exact_match": "exact match %", "spearman": "Spearman", "kendall_tau": "Kendall",
            "parse_rate": "parse %", "mean_length_chars": "length (chars)", "pairs": "pairs made"}
_PERCENT = {"oracle_accuracy", "pairwise_accuracy", "five_best", "exact_match", "parse_rate"}


def _get(d: Mapping[str, Any], *keys: str) -> Any:
  for k in keys:
    if not isinstance(d, Mapping) or k not in d:
      return None
    d = d[k]
  return d


def table_rows(models: Mapping[str, Mapping[str, Any]], pairs_by_model: Mapping[str, int]
               ) -> List[Dict[str, Any]]:
  """The report table: one dict per model with the keys of ``TABLE_COLUMNS`` (None = n/a)."""
  rows = []
  for name, m in models.items():
    rows.append({
        "model": name,
        "oracle_accuracy": _get(m, "instruction_following", "accuracy"),
        "mean_oracle_score": _get(m, "instruction_following", "mean_score"),
        "pairwise_accuracy": _get(m, "reward_modelling", "pairwise_accuracy"),
        "five_best": _get(m, "reward_modelling", "five_best"),
        "exact_match": _get(m, "reward_modelling", "exact_match"),
        "spearman": _get(m, "reward_modelling", "spearman"),
        "kendall_tau": _get(m, "reward_modelling", "kendall_tau"),
        "parse_rate": _get(m, "judge", "parse_rate"),
        "mean_length_chars": _get(m, "responses", "mean_length_chars"),
        "pairs": pairs_by_model.get(name),
    })
  return rows


def format_value(key: str, value: Any) -> str:
  """Table cell text: percentages for rates, 3 decimals for scores/correlations, '-' for n/a."""
  if value is None:
    return "-"
  if key in _PERCENT:
    return f"{100 * value:.1f}"
  if key == "mean_length_chars":
    return f"{value:.1f}"
  if isinstance(value, float):
    return f"{value:.3f}"
  return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS,
                 markdown: bool = False) -> str:
  """Rows as an aligned text table (or a Markdown table)."""
  heads = [_HEADERS.get(c, c) for c in columns]
  cells = [[format_value(c, r.get(c)) for c in columns] for r in rows]
  if markdown:
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
  widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
  lines = [" | ".join(h.ljust(w) for h, w in zip(heads, widths)),
           "-+-".join("-" * w for w in widths)]
  lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def _wtl(h: Optional[Mapping[str, Any]]) -> str:
  if not h:
    return "-"
  if h.get("win_rate") is None:
    return f"no scored prompts ({h.get('unscored', 0)} unscored)"
  s = f"{100 * h['win_rate']:.1f} / {100 * h['tie_rate']:.1f} / {100 * h['loss_rate']:.1f}"
  return s + (f" ({h['unscored']} unscored)" if h.get("unscored") else "")


def build_report(run) -> Dict[str, Any]:
  """Collects everything the report shows into one JSON-able dict."""
  names = [n for n in run_models(run) if os.path.exists(run.path(EVAL_DIR, n, "metrics.json"))]
  models = {n: read_json(run.path(EVAL_DIR, n, "metrics.json")) for n in names}
  iterations, pairs_by_model = [], {}
  loop_path = run.path(EVAL_DIR, "loop.json")
  loop_oracle = {r["iteration"]: r for r in read_json(loop_path)} if os.path.exists(loop_path) else {}
  for t in range(1, run.cfg.loop.iterations + 1):
    p = run.idir(t, "stats.json")
    if not os.path.exists(p):
      continue
    st = read_json(p)
    pairs = _get(st, "pairs", "pairs")
    if pairs is not None:
      pairs_by_model[f"M{t}"] = pairs
    o = loop_oracle.get(t, {})
    iterations.append({
        "iteration": t, "model": f"M{t}",
        "prompts_kept": _get(st, "prompts", "kept"), "prompt_attempts": _get(st, "prompts", "attempts"),
        "prompt_filters": _get(st, "prompts", "filters"),
        "valid_prompts": _get(o, "prompts", "valid_fraction"),
        "candidates": _get(st, "candidates", "candidates"),
        "mean_candidate_chars": _get(st, "candidates", "mean_length_chars"),
        "candidate_oracle_accuracy": _get(o, "candidates", "accuracy"),
        "parse_rate": _get(st, "judge", "parse_rate"),
        "score_histogram": _get(st, "judge", "score_histogram"),
        "pairs": pairs,
        "mean_chosen_chars": _get(st, "pairs", "mean_chosen_length_chars"),
        "mean_rejected_chars": _get(st, "pairs", "mean_rejected_length_chars"),
        "pairs_chosen_better": _get(o, "pairs", "chosen_better"),
        "pairs_tie": _get(o, "pairs", "tie"),
        "pairs_chosen_worse": _get(o, "pairs", "chosen_worse"),
        "dpo_reward_accuracy": _get(st, "dpo", "final_reward_accuracy"),
        "dpo_steps": _get(st, "dpo", "steps"),
    })
  h2h_path = run.path(EVAL_DIR, "head_to_head.json")
  h2h = read_json(h2h_path) if os.path.exists(h2h_path) else {"comparisons": []}
  timing = {}
  stages_dir = run.path("stages")
  if os.path.isdir(stages_dir):
    for f in sorted(os.listdir(stages_dir)):
      if f.endswith(".json"):
        timing[f[:-5]] = _get(read_json(os.path.join(stages_dir, f)), "stats", "seconds")
  return {
      "workdir": run.workdir, "seed": run.cfg.seed, "source": run.cfg.data.source,
      "iterations": run.cfg.loop.iterations, "columns": list(TABLE_COLUMNS),
      "table": table_rows(models, pairs_by_model), "head_to_head": h2h, "loop": iterations,
      "models": models, "stage_seconds": timing,
  }


def markdown(report: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
  """``report.md``: the model table, head to head, per-iteration diagnostics, per-family accuracy."""
  out = [f"# Self-rewarding run report\n",
         f"workdir `{report['workdir']}`, seed {report['seed']}, seed data `{report['source']}`, "
         f"{report['iterations']} iterations.\n",
         "## Models\n",
         "Instruction following: oracle accuracy / mean oracle score of greedy responses on the "
         "held-out prompts (synthetic world only). Reward modelling: the model's judge scores on "
         "the EFT eval groups against the reference ranking. Pairs: preference pairs the model "
         "made as M_t.\n",
         format_table(report["table"], markdown=True), ""]
  comps = report["head_to_head"].get("comparisons", [])
  if comps:
    out += ["## Head to head (win / tie / loss %)\n",
            f"Model judge: {report['head_to_head'].get('judge_model')}.\n",
            "| A vs B | oracle | model judge |", "|---|---|---|"]
    out += [f"| {c['a']} vs {c['b']} | {_wtl(c.get('oracle'))} | {_wtl(c.get('judge'))} |" for c in comps]
    out.append("")
  if report["loop"]:
    cols = ("iteration", "prompts_kept", "prompt_attempts", "valid_prompts",
            "candidate_oracle_accuracy", "parse_rate", "pairs", "pairs_chosen_better",
            "pairs_chosen_worse", "mean_chosen_chars", "mean_rejected_chars", "dpo_reward_accuracy")
    out += ["## Iterations\n",
            "valid prompts, candidate accuracy and the share of pairs whose chosen response the "
            "oracle rates better / worse are measured with the oracle after the fact; the loop "
            "never sees them.\n",
            "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in report["loop"]:
      out.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    out.append("")
  fam_rows = {n: _get(m, "instruction_following", "by_family") for n, m in report["models"].items()}
  fams = sorted({f for v in fam_rows.values() if v for f in v})
  if fams:
    out += ["## Oracle accuracy per family (%)\n", "| model | " + " | ".join(fams) + " |",
            "|" + "|".join("---" for _ in range(len(fams) + 1)) + "|"]
    for n, v in fam_rows.items():
      if v:
        out.append(f"| {n} | " + " | ".join(_cell(_get(v, f, "accuracy"), pct=True) for f in fams) + " |")
    out.append("")
  if plots:
    out += ["## Plots\n"] + [f"![{os.path.basename(p)}]({os.path.relpath(p, report['workdir'])})"
                             for p in plots]
  if report.get("stage_seconds"):
    total = sum(v for v in report["stage_seconds"].values() if v)
    out += ["", f"Stage time (sum of stage markers): {total:.0f} s."]
  return "\n".join(out) + "\n"


def _cell(v: Any, pct: bool = False) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"
  return str(v)


# ---- plots -----------------------------------------------------------------------------------------

def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_all(report: Mapping[str, Any], out_dir: str) -> List[str]:
  """Writes the PNGs (see the module docstring); returns their paths."""
  plt = _pyplot()
  os.makedirs(out_dir, exist_ok=True)
  rows = report["table"]
  names = [r["model"] for r in rows]
  x = list(range(len(names)))
  paths = []

  def nan(v):
    return float("nan") if v is None else v

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for key, label in (("oracle_accuracy", "oracle accuracy"), ("mean_oracle_score", "mean oracle score")):
    ax1.plot(x, [nan(r[key]) for r in rows], marker="o", label=label)
  ax1.set_title("Instruction following (held-out prompts)")
  for key, label in (("pairwise_accuracy", "pairwise accuracy"), ("exact_match", "exact match"),
                     ("spearman", "Spearman"), ("kendall_tau", "Kendall tau")):
    ax2.plot(x, [nan(r[key]) for r in rows], marker="o", label=label)
  ax2.set_title("Reward modelling (EFT eval set)")
  for ax in (ax1, ax2):
    ax.set_xticks(x, names)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(_save(fig, out_dir, "axes.png"))

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  ax1.bar(x, [nan(r["mean_length_chars"]) for r in rows])
  ax1.set_xticks(x, names)
  ax1.set_title("Mean response length on eval prompts (chars)")
  its = report["loop"]
  if its:
    xi = [r["iteration"] for r in its]
    for key, label in (("mean_candidate_chars", "candidates"), ("mean_chosen_chars", "chosen"),
                       ("mean_rejected_chars", "rejected")):
      ax2.plot(xi, [nan(r.get(key)) for r in its], marker="o", label=label)
    ax2.set_xticks(xi, [f"iter{t}" for t in xi])
    ax2.legend(fontsize=8)
  ax2.set_title("Loop responses (chars)")
  fig.tight_layout()
  paths.append(_save(fig, out_dir, "lengths.png"))

  bins = ["0", "1", "2", "3", "4", "5", "none"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  hists = {n: _get(report["models"][n], "judge", "score_histogram") for n in names}
  hists = {n: h for n, h in hists.items() if h}
  _grouped_bars(ax1, bins, hists)
  ax1.set_title("Judge scores on the EFT eval set")
  _grouped_bars(ax2, bins, {f"iter{r['iteration']} (M{r['iteration']})": r["score_histogram"]
                            for r in its if r.get("score_histogram")})
  ax2.set_title("Judge scores in the loop")
  fig.tight_layout()
  paths.append(_save(fig, out_dir, "score_histograms.png"))

  fam = {n: _get(report["models"][n], "instruction_following", "by_family") for n in names}
  fam = {n: v for n, v in fam.items() if v}
  if fam:
    families = sorted({f for v in fam.values() for f in v})
    fig, ax = plt.subplots(figsize=(12, 4))
    _grouped_bars(ax, families, {n: {f: (_get(v, f, "accuracy") or 0.0) for f in families}
                                 for n, v in fam.items()})
    ax.set_title("Oracle accuracy per family")
    fig.tight_layout()
    paths.append(_save(fig, out_dir, "families.png"))
  plt.close("all")
  return paths


def _grouped_bars(ax, keys: Sequence[str], series: Mapping[str, Mapping[str, float]]) -> None:
  n = max(len(series), 1)
  width = 0.8 / n
  for i, (name, values) in enumerate(series.items()):
    ax.bar([k + (i - (n - 1) / 2) * width for k in range(len(keys))],
           [values.get(key, 0) or 0 for key in keys], width, label=name)
  ax.set_xticks(range(len(keys)), keys, fontsize=8)
  if series:
    ax.legend(fontsize=7)


def _save(fig, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  with atomic_open(path, "wb") as f:  # multi-process: process 0 writes, all wait
    fig.savefig(f, dpi=100, format="png")
  return path


def write_report(run) -> Dict[str, Any]:
  """The ``report`` stage: writes ``report.json``, ``report.md`` and the plots; returns a summary."""
  report = build_report(run)
  if not report["table"]:
    raise FileNotFoundError(f"no evaluated model in {run.path(EVAL_DIR)}: run stage 'eval' first")
  plots = plot_all(report, run.path("plots"))
  report["plots"] = plots
  write_json(run.path("report.json"), report)
  with atomic_open(run.path("report.md")) as f:
    f.write(markdown(report, plots))
  return {"report": run.path("report.md"), "plots": len(plots), "models": len(report["table"])}
