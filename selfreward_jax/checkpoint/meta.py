"""Meta's original Llama 2 checkpoints (``params.json`` + ``consolidated.NN.pth``) -> our pytree.

Meta names and their HF equivalents (whose mapping to our layout is in ``checkpoint/hf.py``)::

  tok_embeddings.weight              [V, D]    model.embed_tokens.weight
  layers.{l}.attention.wq.weight     [N*H, D]  ...self_attn.q_proj.weight  (RoPE-permuted, below)
  layers.{l}.attention.wk.weight     [K*H, D]  ...self_attn.k_proj.weight  (RoPE-permuted)
  layers.{l}.attention.wv.weight     [K*H, D]  ...self_attn.v_proj.weight
  layers.{l}.attention.wo.weight     [D, N*H]  ...self_attn.o_proj.weight
  layers.{l}.feed_forward.w1.weight  [F, D]    ...mlp.gate_proj.weight
  layers.{l}.feed_forward.w2.weight  [D, F]    ...mlp.down_proj.weight
  layers.{l}.feed_forward.w3.weight  [F, D]    ...mlp.up_proj.weight
  layers.{l}.attention_norm.weight   [D]       ...input_layernorm.weight
  layers.{l}.ffn_norm.weight         [D]       ...post_attention_layernorm.weight
  norm.weight                        [D]       model.norm.weight
  output.weight                      [V, D]    lm_head.weight

RoPE pairing: Meta's q/k rows pair dimensions (2i, 2i+1) of each head (interleaved, complex
multiplication); our model (like HF) pairs (i, i + H/2) (rotate-half). Import permutes the rows of
each head so that Meta row 2i+j becomes row j*H/2+i (transformers' ``convert_llama_weights_to_hf``
``permute``)::

  w.reshape(heads, H // 2, 2, D).transpose(0, 2, 1, 3).reshape(heads * H, D)

Model-parallel checkpoints (``consolidated.00.pth`` .. ``consolidated.NN.pth``) are merged per
tensor with Llama's fairscale split rules: column-parallel wq/wk/wv/w1/w3 and output along dim 0,
row-parallel wo/w2 along dim 1, tok_embeddings (ParallelEmbedding) along dim 1, norms replicated.

Files are read with ``torch.load(weights_only=True, mmap=True)``: tensors only, never arbitrary
pickled objects, and memory-mapped so a shard is not read into RAM at once. torch is needed only
here (it is not a dependency of the rest of the library).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from selfreward_jax.checkpoint import hf as hf_ckpt
from selfreward_jax.checkpoint.hf import CheckpointError, DTypeLike, PathLike
from selfreward_jax.model.llama import LlamaConfig

PARAMS_FILE = "params.json"
HARMLESS_TENSORS = ("rope.freqs",)  # Llama 1 checkpoints store the rotary frequencies

# Meta per-layer name -> (HF per-layer suffix, concat dim across model-parallel shards or None).
_LAYER_MAP = {
    "attention.wq.weight": ("self_attn.q_proj.weight", 0),
    "attention.wk.weight": ("self_attn.k_proj.weight", 0),
    "attention.wv.weight": ("self_attn.v_proj.weight", 0),
    "attention.wo.weight": ("self_attn.o_proj.weight", 1),
    "feed_forward.w1.weight": ("mlp.gate_proj.weight", 0),
    "feed_forward.w2.weight": ("mlp.down_proj.weight", 1),
    "feed_forward.w3.weight": ("mlp.up_proj.weight", 0),
    "attention_norm.weight": ("input_layernorm.weight", None),
    "ffn_norm.weight": ("post_attention_layernorm.weight", None),
}
_TOP_MAP = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", 1),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", 0),
}


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float] = None) -> int:
  """Meta's SwiGLU width: int(2 * 4 * dim / 3), times the multiplier, rounded up to multiple_of.

  Llama 2: 7B -> 11008, 13B -> 13824, 70B (multiplier 1.3, multiple_of 4096) -> 28672.
  """
  hidden = int(2 * 4 * dim / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def config_from_meta(meta_params: Mapping[str, Any], *, vocab_size: Optional[int] = None,
                     source: str = PARAMS_FILE, **overrides: Any) -> LlamaConfig:
  """``LlamaConfig`` from Meta's params.json.

  Args:
    meta_params: parsed params.json (dim, n_layers, n_heads, n_kv_heads, vocab_size, multiple_of,
      ffn_dim_multiplier, norm_eps, rope_theta).
    vocab_size: used when params.json says -1 (read it from ``tok_embeddings.weight``).
    source: path used in error messages.
    **overrides: LlamaConfig fields (e.g. ``max_seq_len``: params.json has none; Llama 2's
      context of 4096 is the LlamaConfig default).
  """
  p = dict(meta_params)

  def need(key):
    if p.get(key) is None:
      raise CheckpointError(f"{source}: required key {key!r} is missing")
    return p[key]

  for key in ("use_scaled_rope", "rope_scaling"):
    if p.get(key):
      raise CheckpointError(f"{source}: key {key!r} = {p[key]!r} is not supported: this library "
                            f"implements only Llama 2's plain RoPE")
  dim, n_heads = int(need("dim")), int(need("n_heads"))
  vocab = int(p.get("vocab_size", -1))
  if vocab <= 0:
    if vocab_size is None:
      raise CheckpointError(f"{source}: key 'vocab_size' = {vocab} and no tensor to read it from")
    vocab = int(vocab_size)
  kw = dict(
      vocab_size=vocab,
      dim=dim,
      n_layers=int(need("n_layers")),
      n_heads=n_heads,
      n_kv_heads=int(p.get("n_kv_heads") or n_heads),
      ffn_dim=meta_ffn_dim(dim, int(p.get("multiple_of", 256)), p.get("ffn_dim_multiplier")),
      norm_eps=float(p.get("norm_eps", 1e-5)),
      rope_theta=float(p.get("rope_theta", 10000.0)),
      tie_embeddings=False,
  )
  kw.update(overrides)
  try:
    return LlamaConfig(**kw)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: {e}") from None


def permute_meta_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Interleaved-pair q/k rows [heads*H, D] (Meta) -> rotate-half rows (HF / ours)."""
  rows, d = w.shape
  h = rows // n_heads
  return w.reshape(n_heads, h // 2, 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def _torch_to_numpy(t) -> np.ndarray:
  import torch
  if t.dtype == torch.bfloat16:
    import ml_dtypes
    return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  if not t.dtype.is_floating_point:
    raise TypeError(f"dtype {t.dtype} is not a float")
  return t.contiguous().numpy()


def _shard_files(path: str) -> List[str]:
  files = sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))
  if not files:
    raise CheckpointError(f"{path}: no consolidated.*.pth found (Meta checkpoint directory "
                          f"expected; for HF directories use load_hf_checkpoint)")
  numbers = []
  for f in files:
    m = re.fullmatch(r"consolidated\.(\d+)\.pth", os.path.basename(f))
    if not m:
      raise CheckpointError(f"{f}: unexpected shard file name (want consolidated.NN.pth)")
    numbers.append(int(m.group(1)))
  if numbers != list(range(len(files))):
    raise CheckpointError(f"{path}: model-parallel shards must be consolidated.00.pth .. "
                          f"consolidated.{len(files) - 1:02d}.pth; found {numbers}")
  return files


def _load_shard(filename: str) -> Dict[str, Any]:
  try:
    import torch
  except ImportError:  # pragma: no cover
    raise ImportError("load_meta_checkpoint needs torch (the CPU build is enough) to read .pth "
                      "files; or convert the checkpoint to HF safetensors and use "
                      "load_hf_checkpoint") from None
  try:
    state = torch.load(filename, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:
    raise CheckpointError(f"{filename}: cannot read as a tensors-only torch checkpoint "
                          f"(weights_only=True, mmap=True): {type(e).__name__}: {e}") from None
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{filename}: expected a dict of tensors, got {type(state).__name__}")
  return dict(state)


def load_meta_checkpoint(path: PathLike, *, dtype: Optional[DTypeLike] = "float32",
                         mesh: Optional[jax.sharding.Mesh] = None,
                         config_overrides: Optional[Mapping[str, Any]] = None
                         ) -> Tuple[LlamaConfig, Dict[str, Any]]:
  """Loads a Meta Llama 2 directory (params.json + consolidated.NN.pth).

  Args:
    path: directory with params.json and consolidated.00.pth (.. consolidated.NN.pth).
    dtype: parameter dtype ("float32", "bfloat16", "float16"), or None to keep the file's.
    mesh: place each parameter on its ``sharding.param_shardings`` sharding (as
      ``load_hf_checkpoint``); None = the default device.
    config_overrides: extra LlamaConfig fields (e.g. ``compute_dtype``, ``max_seq_len``).

  Returns:
    ``(config, params)``; q/k weights are permuted to our rotate-half RoPE pairing.

  Raises:
    CheckpointError naming the file and tensor/key: missing files, missing or unexpected tensors,
    shape mismatches, non-float tensors, replicated norms that differ between shards.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: checkpoint directory not found")
  params_path = os.path.join(path, PARAMS_FILE)
  if not os.path.isfile(params_path):
    raise CheckpointError(f"{params_path}: not found (a Meta checkpoint directory needs "
                          f"params.json)")
  try:
    with open(params_path, encoding="utf-8") as f:
      meta_params = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{params_path}: invalid JSON: {e}") from None
  overrides = dict(config_overrides or {})
  if "param_dtype" in overrides:
    raise CheckpointError("config_overrides: set the parameter dtype with dtype=, not param_dtype")

  files = _shard_files(path)
  shards = [_load_shard(f) for f in files]
  n_shards = len(shards)
  vocab = None
  if "tok_embeddings.weight" in shards[0]:
    vocab = int(shards[0]["tok_embeddings.weight"].shape[0])
  config = config_from_meta(meta_params, vocab_size=vocab, source=params_path, **overrides)

  # Meta name -> (HF name, concat dim, permute heads or None, expected full HF shape).
  expected_hf = hf_ckpt.expected_tensors(config.replace(tie_embeddings=False))
  table: Dict[str, Tuple[str, Optional[int], Optional[int]]] = {}
  for meta_name, (hf_name, dim) in _TOP_MAP.items():
    table[meta_name] = (hf_name, dim, None)
  for layer in range(config.n_layers):
    for suffix, (hf_suffix, dim) in _LAYER_MAP.items():
      heads = {"attention.wq.weight": config.n_heads,
               "attention.wk.weight": config.n_kv_heads}.get(suffix)
      table[f"layers.{layer}.{suffix}"] = (f"model.layers.{layer}.{hf_suffix}", dim, heads)

  # Validate every shard before reading any data.
  layer_re = re.compile(r"^layers\.(\d+)\.")
  for filename, state in zip(files, shards):
    layers = sorted({int(m.group(1)) for m in map(layer_re.match, state) if m})
    if layers and layers != list(range(config.n_layers)):
      raise CheckpointError(f"{params_path}: key 'n_layers' = {config.n_layers} disagrees with "
                            f"{filename}, which holds layers {layers[0]}..{layers[-1]}")
    for meta_name, (hf_name, dim, _) in table.items():
      if meta_name not in state:
        raise CheckpointError(f"{filename}: tensor {meta_name!r} not found")
      t = state[meta_name]
      if not t.dtype.is_floating_point:
        raise CheckpointError(f"{filename}: tensor {meta_name!r} has dtype {t.dtype}; "
                              f"expected a float dtype")
      full = list(expected_hf[hf_name][0].hf_shape)
      want = list(full)
      if dim is not None and n_shards > 1:
        if full[dim] % n_shards:
          raise CheckpointError(f"{filename}: tensor {meta_name!r}: dim {dim} of size {full[dim]} "
                                f"(from {params_path}) cannot be split over {n_shards} shards")
        want[dim] = full[dim] // n_shards
      if list(t.shape) != want:
        raise CheckpointError(
            f"{filename}: tensor {meta_name!r} has shape {list(t.shape)}, expected {want}"
            f"{f' (1/{n_shards} of {full} along dim {dim})' if want != full else ''} "
            f"from {params_path}")
    extra = [k for k in state if k not in table and k not in HARMLESS_TENSORS]
    if extra:
      raise CheckpointError(f"{filename}: unexpected tensors {extra[:5]}"
                            f"{f' and {len(extra) - 5} more' if len(extra) > 5 else ''}; "
                            f"refusing to drop weights silently")

  if dtype is None:
    file_dtypes = sorted({str(t.dtype).replace("torch.", "") for t in shards[0].values()
                          if t.dtype.is_floating_point})
    if len(file_dtypes) != 1 or file_dtypes[0] not in hf_ckpt.PARAM_DTYPES:
      raise CheckpointError(f"{files[0]}: tensors have dtypes {file_dtypes}; pass dtype= explicitly")
    config = config.replace(param_dtype=file_dtypes[0])
  else:
    config = config.replace(param_dtype=hf_ckpt._dtype_name(dtype))

  by_hf = {hf_name: (meta_name, dim, heads) for meta_name, (hf_name, dim, heads) in table.items()}

  def read_hf(hf_name: str) -> np.ndarray:
    import torch
    meta_name, dim, heads = by_hf[hf_name]
    parts = [state[meta_name] for state in shards]
    if dim is None or n_shards == 1:
      for filename, part in zip(files[1:], parts[1:]):
        if not torch.equal(part, parts[0]):
          raise CheckpointError(f"{filename}: replicated tensor {meta_name!r} differs from "
                                f"{files[0]}")
      t = parts[0]
    else:
      t = torch.cat(parts, dim=dim)
    w = _torch_to_numpy(t)
    if heads is not None:
      w = permute_meta_to_hf(w, heads)
    return w

  params = hf_ckpt.assemble_params(config, read_hf, mesh)
  return config, params
