"""Side-by-side benchmarks against peers, on one Llama configuration and the same data.

  python -m selfreward_jax.benchmark [--out=results.json] [--only=sft,dpo,sampling,serve,mfu,growth]
      [--tunix_python=/path/to/tunix-venv/bin/python] [--dim=512 --layers=8 --vocab=32000 --seq=256]

Measurements (details of what is timed in ``bench/train.py``, ``bench/sampling.py`` and
``bench/tunix_runner.py``):

1. ``sft``: train-step tokens/s, ours (f32, and bf16 compute with f32 accumulation) vs
   transformers' ``LlamaForCausalLM`` + ``torch.optim.AdamW`` (f32), same batch.
2. ``dpo``: pairs/s, ours vs TRL's ``DPOTrainer`` (and Tunix's), reference log-probs precomputed.
3. ``sampling``: new tokens/s, our ``Sampler`` vs transformers' ``generate`` (and Tunix's sampler),
   P prompts x n new tokens, greedy and T=0.7 top-p 0.9; ``serve``: our JetStream gRPC server.
4. ``mfu``: model FLOP/s of our SFT step (``llama.flops_per_token``) over this machine's matmul
   peak measured in the same run (``jnp.dot`` on 2048^2: bf16 inputs with f32 accumulation; f32).
   With ``sampling``, the same for greedy f32 decoding, ours and ``generate``'s (the sampling
   roofline: what fraction of the peak a 3x target would need); with ``dpo``, the fraction of
   the peak a DPO step 2x TRL's would need (the DPO target line).
5. ``growth``: step time vs sequence length, sampling time vs number of prompts, compile time vs
   depth (flat: the layers run under ``lax.scan``).

Every side starts from the same float32 weights (a seeded transformers Llama converted to our
layout). Timings are medians after a warm-up run (compilation excluded; reported separately).
A peer that is not installed is skipped with the reason kept in the JSON. The machine is
described in the output (nproc, CPU, load average): on a shared machine compare the columns of
one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

from selfreward_jax.bench import common

PARTS = ("sft", "dpo", "sampling", "serve", "mfu", "growth")
_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench", "tunix_runner.py")


def _ints(s: str) -> List[int]:
  return [int(x) for x in s.split(",") if x]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
  d = common.BenchConfig()
  p = argparse.ArgumentParser(prog="python -m selfreward_jax.benchmark",
                              description=__doc__.splitlines()[0])
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
  p.add_argument("--tunix_python", default=os.environ.get("TUNIX_PYTHON"),
                 help="python of a virtualenv with google-tunix (default $TUNIX_PYTHON); "
                      "'' or unset: Tunix column skipped")
  p.add_argument("--tunix_timeout", type=float, default=3600.0)
  p.add_argument("--no_peers", action="store_true", help="ours only")
  for name in ("vocab", "dim", "layers", "heads", "ffn", "seq", "batch", "steps", "prompts",
               "sample_repeats", "prompt_len", "new_tokens", "growth_rows", "growth_new_tokens", "peak_size",
               "torch_threads"):
    p.add_argument(f"--{name}", type=int, default=getattr(d, name))
  for name in ("growth_seqs", "growth_prompts", "growth_depths"):
    p.add_argument(f"--{name}", type=_ints, default=list(getattr(d, name)))
  return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> common.BenchConfig:
  fields = {f.name for f in dataclasses.fields(common.BenchConfig)}
  kw = {k: v for k, v in vars(args).items() if k in fields}
  for k in ("growth_seqs", "growth_prompts", "growth_depths"):
    kw[k] = tuple(kw[k])
  return common.BenchConfig(**kw)


# ---- orchestration --------------------------------------------------------------------------------

def _log(msg: str) -> None:
  print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _guard(results: Dict[str, Any], key: str, fn, *a, **kw) -> Any:
  """Runs one measurement; a failure is recorded (and printed) instead of ending the run."""
  _log(f"{key} ...")
  try:
    results[key] = fn(*a, **kw)
  except Exception as e:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    results[key] = {"error": repr(e), "traceback": traceback.format_exc()[-3000:]}
    _log(f"{key} FAILED: {e!r}")
  return results[key]


def _tunix(cfg: common.BenchConfig, args, params, parts: List[str]) -> Dict[str, Any]:
  """Tunix's column, in its own virtualenv (a subprocess with the same weights and data)."""
  py = args.tunix_python
  if not py:
    return common.skipped("no Tunix virtualenv given (--tunix_python or $TUNIX_PYTHON); create "
                          "one with `python3 -m venv V && V/bin/pip install google-tunix`")
  if not os.path.exists(py):
    return common.skipped(f"--tunix_python {py} does not exist")
  with tempfile.TemporaryDirectory() as d:
    weights = {"embed": params["embed"], "final_norm": params["final_norm"],
               "lm_head": params["lm_head"], **params["layers"]}
    np.savez(os.path.join(d, "w.npz"), **weights)
    spec = {"vocab": cfg.vocab, "dim": cfg.dim, "layers": cfg.layers, "heads": cfg.heads,
            "ffn": cfg.ffn_dim, "steps": cfg.steps, "parts": parts,
            "pairs": {k: v.tolist() for k, v in common.dpo_pairs(cfg).items()},
            "prompts": common.sampling_prompts(cfg), "new_tokens": cfg.new_tokens}
    with open(os.path.join(d, "spec.json"), "w", encoding="utf-8") as f:
      json.dump(spec, f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = os.path.join(d, "out.json")
    try:
      proc = subprocess.run([py, _RUNNER, os.path.join(d, "spec.json"),
                             os.path.join(d, "w.npz"), out], env=env, capture_output=True,
                            text=True, timeout=args.tunix_timeout, check=False)
    except subprocess.TimeoutExpired:
      return common.skipped(f"Tunix runner timed out after {args.tunix_timeout:.0f}s")
    if proc.returncode != 0 or not os.path.exists(out):
      return common.skipped(f"Tunix runner exited {proc.returncode}: {proc.stderr[-2000:]}")
    with open(out, encoding="utf-8") as f:
      res = json.load(f)
  if "error" in res:
    return common.skipped(res["error"])
  return res


def run(args: argparse.Namespace) -> Dict[str, Any]:
  """All requested measurements; returns the results dict (also the JSON's content)."""
  from selfreward_jax.bench import sampling as bs, train as bt  # pylint: disable=g-import-not-at-top
  parts = [p for p in args.only.split(",") if p]
  unknown = set(parts) - set(PARTS)
  if unknown:
    raise SystemExit(f"--only: unknown parts {sorted(unknown)}; allowed: {PARTS}")
  cfg = config_from_args(args)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    if cfg.torch_threads:
      torch.set_num_threads(cfg.torch_threads)
  except ImportError:
    torch = None
  res: Dict[str, Any] = {"config": {**dataclasses.asdict(cfg), "ffn_dim": cfg.ffn_dim,
                                    "params": cfg.llama().num_params()},
                         "machine": common.machine(), "parts": parts}
  if torch is not None:
    res["machine"]["torch_threads"] = torch.get_num_threads()
  hf = common.hf_model(cfg) if torch is not None else None
  params = common.params_from_hf(hf) if hf is not None else _random_params(cfg)
  peers = not args.no_peers and hf is not None
  no_torch = common.skipped("torch/transformers not installed") if hf is None else \
      common.skipped("--no_peers")

  if "mfu" in parts or "sft" in parts:
    _guard(res, "peak_before", common.matmul_peak, cfg.peak_size)
  if "sft" in parts or "mfu" in parts:
    _guard(res, "sft_ours_f32", bt.ours_sft, cfg, params, "float32")
    _guard(res, "sft_ours_bf16", bt.ours_sft, cfg, params, "bfloat16")
    if peers:
      _guard(res, "sft_hf_f32", bt.hf_sft, cfg, common.hf_model(cfg))
    else:
      res["sft_hf_f32"] = no_torch
  if "mfu" in parts or "sft" in parts:
    _guard(res, "peak_after", common.matmul_peak, cfg.peak_size)
  if "dpo" in parts:
    pairs = common.dpo_pairs(cfg)
    batch = bt.our_dpo_batch(cfg, params, pairs)
    _guard(res, "dpo_ours_f32", bt.ours_dpo, cfg, params, batch, "float32")
    _guard(res, "dpo_ours_bf16", bt.ours_dpo, cfg, params, batch, "bfloat16")
    if peers:
      with tempfile.TemporaryDirectory() as d:
        _guard(res, "dpo_trl_f32", bt.trl_dpo, cfg, common.hf_model(cfg), pairs, d)
    else:
      res["dpo_trl_f32"] = no_torch
  if "sampling" in parts:
    if "peak_before" not in res:  # the sampling roofline needs this run's matmul peak
      _guard(res, "peak_before", common.matmul_peak, cfg.peak_size)
    prompts = common.sampling_prompts(cfg)
    for mode_name, mode in bs.MODES.items():
      for cd in ("float32", "bfloat16"):
        _guard(res, f"sample_ours_{cd}[{mode_name}]", bs.ours, cfg, params, prompts,
               cfg.new_tokens, mode, compute_dtype=cd, repeats=cfg.sample_repeats)
      if peers:
        _guard(res, f"sample_hf_f32[{mode_name}]", bs.hf_generate, hf, prompts, cfg.new_tokens,
               mode, repeats=cfg.sample_repeats)
      else:
        res[f"sample_hf_f32[{mode_name}]"] = no_torch
  if "serve" in parts:
    _guard(res, "serve_grpc_f32[greedy]", bs.grpc_serving, cfg, params,
           common.sampling_prompts(cfg), cfg.new_tokens)
  if "growth" in parts:
    _guard(res, "growth_seq_bf16", bt.seq_growth, cfg, params)
    _guard(res, "growth_prompts_bf16", bs.prompts_growth, cfg, params)
    _guard(res, "growth_compile_bf16", bt.compile_growth, cfg)
  tunix_parts = [p for p in ("dpo", "sampling") if p in parts]
  if tunix_parts:
    if args.no_peers:
      res["tunix"] = common.skipped("--no_peers")
    else:
      _guard(res, "tunix", _tunix, cfg, args, params, tunix_parts)
  _derive(res, parts)
  res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
  return res


def _random_params(cfg: common.BenchConfig):
  import jax  # pylint: disable=g-import-not-at-top
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, llama.init_params(cfg.llama(), jax.random.PRNGKey(0)))


def _get(res, key, field):
  v = res.get(key)
  return v.get(field) if isinstance(v, dict) else None


def _derive(res: Dict[str, Any], parts: List[str]) -> None:
  """Ratios, MFU and the peak used (median of the measurements around the SFT steps)."""
  peaks = [res[k] for k in ("peak_before", "peak_after") if isinstance(res.get(k), dict)
           and "error" not in res[k]]
  if peaks:
    res["peak"] = {k: float(np.median([p[k] for p in peaks])) for k in peaks[0]}
    for cd, peak_key in (("f32", "f32_flops"), ("bf16", "bf16_f32acc_flops")):
      flops = _get(res, f"sft_ours_{cd}", "model_flops_per_s")
      if flops:
        res[f"mfu_sft_{cd}"] = {"model_flops_per_s": flops, "peak_flops": res["peak"][peak_key],
                                "mfu": flops / res["peak"][peak_key]}
      flops = _get(res, f"dpo_ours_{cd}", "model_flops_per_s")
      if flops:
        res[f"mfu_dpo_{cd}"] = {"model_flops_per_s": flops, "peak_flops": res["peak"][peak_key],
                                "mfu": flops / res["peak"][peak_key]}
    _sampling_roofline(res)
    _dpo_target(res)


def _dpo_target(res: Dict[str, Any]) -> None:
  """Our DPO step's model FLOP/s against this run's peak (f32 and bf16 inputs), and the fraction
  of that peak a step 2x TRL's pairs/s would need (the same model FLOPs per pair)."""
  trl = _rate(res, "dpo_trl_f32", "pairs_per_s")
  for cd, peak_key in (("f32", "f32_flops"), ("bf16", "bf16_f32acc_flops")):
    ours = res.get(f"dpo_ours_{cd}")
    if not trl or not isinstance(ours, dict) or "pairs_per_s" not in ours:
      continue
    per_pair = ours["model_flops_per_s"] / ours["pairs_per_s"]
    peak = res["peak"][peak_key]
    res[f"dpo_target_{cd}"] = {
        "flops_per_pair": per_pair, "peak_flops": peak,
        "ours_fraction_of_peak": ours["model_flops_per_s"] / peak,
        "fraction_of_peak_for_2x_trl": 2 * trl * per_pair / peak}


def _sampling_roofline(res: Dict[str, Any]) -> None:
  """Greedy f32 sampling as model FLOP/s against this run's f32 matmul peak, for us and for
  ``generate``: how much of the machine a 3x target would need (decode at 32 slots is a chain of
  [32, d] x [d, n] matmuls, which run below the big-square peak)."""
  from selfreward_jax.model import llama  # pylint: disable=g-import-not-at-top
  ours = _rate(res, "sample_ours_float32[greedy]", "tokens_per_s")
  hf = _rate(res, "sample_hf_f32[greedy]", "tokens_per_s")
  if not ours:
    return
  c = res["config"]
  config = llama.LlamaConfig(vocab_size=c["vocab"], dim=c["dim"], n_layers=c["layers"],
                             n_heads=c["heads"], n_kv_heads=c["heads"], ffn_dim=c["ffn_dim"],
                             max_seq_len=2 * c["prompt_len"] + c["new_tokens"])
  # a new token at position p attends to p + 1 keys: on average prompt + new/2 over the run
  per_token = llama.flops_per_token(config, 2 * c["prompt_len"] + c["new_tokens"],
                                    training=False)
  peak = res["peak"]["f32_flops"]
  out = {"flops_per_token": per_token, "peak_f32_flops": peak,
         "ours_flops_per_s": ours * per_token, "ours_fraction_of_peak": ours * per_token / peak}
  if hf:
    out.update(hf_flops_per_s=hf * per_token, hf_fraction_of_peak=hf * per_token / peak,
               fraction_of_peak_for_3x_hf=3 * hf * per_token / peak)
  res["sampling_roofline_f32"] = out


# ---- the table ------------------------------------------------------------------------------------

def _rate(res, key, field):
  v = _get(res, key, field)
  return v if isinstance(v, (int, float)) else None


def _cell(res, key, field) -> str:
  v = res.get(key)
  if not isinstance(v, dict):
    return "-"
  if "skipped" in v:
    return "skipped"
  if "error" in v:
    return "error"
  x = v.get(field)
  return f"{x:,.1f}" if isinstance(x, (int, float)) else "-"


def _with_tunix(res: Dict[str, Any]) -> Dict[str, Any]:
  """``res`` plus the Tunix results under flat keys (``tunix_dpo``, ``tunix_sample[mode]``)."""
  view = dict(res)
  tun = res.get("tunix") if isinstance(res.get("tunix"), dict) else {}
  whole = tun if "skipped" in tun else None
  view["tunix_dpo"] = tun.get("dpo", whole)
  samp = tun.get("sampling", whole)
  for mode in ("greedy", "T=0.7 top-p 0.9"):
    view[f"tunix_sample[{mode}]"] = samp.get(mode, samp) if isinstance(samp, dict) else None
  return view


def table(res: Dict[str, Any]) -> str:
  """The human-readable summary of ``res`` (also printed by ``main``)."""
  m, c = res["machine"], res["config"]
  view = _with_tunix(res)
  lines = [f"machine: {m['nproc']} cores, {m['cpu']}, load average {m['loadavg']} -> "
           f"{m.get('loadavg_end')}; jax {m['jax']} ({m['jax_backend']}), torch {m.get('torch')} "
           f"({m.get('torch_threads')} threads), transformers {m.get('transformers')}, "
           f"trl {m.get('trl')}",
           f"model: Llama V={c['vocab']} D={c['dim']} L={c['layers']} N=K={c['heads']} "
           f"F={c['ffn_dim']} ({c['params'] / 1e6:.1f}M params); seq {c['seq']}, batch "
           f"{c['batch']} rows ({max(c['batch'] // 2, 1)} DPO pairs); sampling {c['prompts']} "
           f"prompts x {c['new_tokens']} new tokens (prompt {c['prompt_len']})", ""]
  rows = []

  def row(name, unit, ours_key, field, peers):
    ours = _rate(view, ours_key, field)
    cells = [_cell(view, ours_key, field)]
    for pk, pf in peers:
      cells.append(_cell(view, pk, pf) if pk else "")
      peer = _rate(view, pk, pf) if pk else None
      cells.append(f"{ours / peer:.2f}x" if ours and peer else "")
    rows.append([name, unit] + cells)

  row("SFT step f32", "tok/s", "sft_ours_f32", "tokens_per_s",
      [("sft_hf_f32", "tokens_per_s"), (None, None)])
  row("SFT step bf16/f32acc", "tok/s", "sft_ours_bf16", "tokens_per_s",
      [("sft_hf_f32", "tokens_per_s"), (None, None)])
  row("DPO step f32", "pairs/s", "dpo_ours_f32", "pairs_per_s",
      [("dpo_trl_f32", "pairs_per_s"), ("tunix_dpo", "pairs_per_s")])
  row("DPO step bf16/f32acc", "pairs/s", "dpo_ours_bf16", "pairs_per_s",
      [("dpo_trl_f32", "pairs_per_s"), ("tunix_dpo", "pairs_per_s")])
  for mode in ("greedy", "T=0.7 top-p 0.9"):
    for cd in ("float32", "bfloat16"):
      row(f"sample {mode} {'f32' if cd == 'float32' else 'bf16'}", "tok/s", f"sample_ours_{cd}[{mode}]", "tokens_per_s",
          [(f"sample_hf_f32[{mode}]", "tokens_per_s"), (f"tunix_sample[{mode}]", "tokens_per_s")])
  row("serve gRPC greedy f32", "tok/s", "serve_grpc_f32[greedy]", "tokens_per_s",
      [(f"sample_hf_f32[greedy]", "tokens_per_s"), (None, None)])
  header = ["measurement", "unit", "ours", "HF/TRL", "ours/HF", "Tunix", "ours/Tunix"]
  widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
  fmt = lambda r: "  ".join(str(x).rjust(w) if i > 1 else str(x).ljust(w)
                            for i, (x, w) in enumerate(zip(r, widths)))
  lines += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]

  if "peak" in res:
    p = res["peak"]
    lines.append("")
    lines.append(f"matmul peak (jnp.dot {c['peak_size']}^2, this run): bf16->f32acc "
                 f"{p['bf16_f32acc_flops'] / 1e9:,.0f} GFLOP/s, f32 {p['f32_flops'] / 1e9:,.0f} "
                 "GFLOP/s")
    for k in ("mfu_sft_bf16", "mfu_sft_f32", "mfu_dpo_bf16", "mfu_dpo_f32"):
      if k in res:
        v = res[k]
        lines.append(f"  {k}: {v['model_flops_per_s'] / 1e9:,.1f} GFLOP/s = "
                     f"{100 * v['mfu']:.1f}% of the measured peak")
  for cd in ("f32", "bf16"):
    tgt = res.get(f"dpo_target_{cd}")
    if tgt:
      lines.append(f"DPO target ({cd}, {tgt['flops_per_pair'] / 1e9:.0f} GFLOP per pair): ours at "
                   f"{100 * tgt['ours_fraction_of_peak']:.0f}% of the {cd} peak; 2x TRL would "
                   f"need {100 * tgt['fraction_of_peak_for_2x_trl']:.0f}%")
  roof = res.get("sampling_roofline_f32")
  if roof:
    line = (f"sampling roofline (greedy f32, {c['prompts']} slots, "
            f"{roof['flops_per_token'] / 1e6:.0f} MFLOP per new token): ours "
            f"{roof['ours_flops_per_s'] / 1e9:.0f} GFLOP/s = "
            f"{100 * roof['ours_fraction_of_peak']:.0f}% of the f32 peak")
    if "hf_flops_per_s" in roof:
      line += (f", generate {roof['hf_flops_per_s'] / 1e9:.0f} GFLOP/s = "
               f"{100 * roof['hf_fraction_of_peak']:.0f}%; 3x generate would need "
               f"{100 * roof['fraction_of_peak_for_3x_hf']:.0f}% of the peak")
    lines.append(line)
  for key, title, unit in (("growth_seq_bf16", "SFT step (bf16) vs seq len", "median_s"),
                           ("growth_prompts_bf16", "sampling (greedy bf16) vs prompts",
                            "median_s"),
                           ("growth_compile_bf16", "train-step compile vs depth", "compile_s")):
    g = res.get(key)
    if isinstance(g, dict) and "error" not in g:
      cells = ", ".join(f"{k}: {v[unit]:.2f}s" for k, v in g.items())
      lines.append(f"{title}: {cells}")
  for k in ("sft_ours_f32", "sft_ours_bf16", "dpo_ours_bf16"):
    if isinstance(res.get(k), dict) and "compile_s" in res[k]:
      lines.append(f"compile (first step) {k}: {res[k]['compile_s']:.1f}s")
  skipped = {k: v["skipped"] for k, v in res.items()
             if isinstance(v, dict) and "skipped" in v}
  tun = res.get("tunix")
  if isinstance(tun, dict):
    for part in ("dpo", "sampling"):
      if isinstance(tun.get(part), dict) and "skipped" in tun[part]:
        skipped[f"tunix.{part}"] = tun[part]["skipped"]
  errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
  for k, v in skipped.items():
    lines.append(f"skipped {k}: {v.splitlines()[0][:300]}")
  for k, v in errors.items():
    lines.append(f"ERROR {k}: {v[:300]}")
  return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  args = parse_args(argv)
  res = run(args)
  text = table(res)
  print(text, flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=1, default=float)
  return 0


if __name__ == "__main__":
  sys.exit(main())
