"""Hugging Face Llama checkpoints (``config.json`` + safetensors) <-> our parameter pytree.

Layout mapping (HF linear weights are ``[out, in]``; ours are ``[in, ...out]``, layers stacked)::

  model.embed_tokens.weight              [V, D]      -> embed [V, D]
  model.layers.{l}.input_layernorm       [D]         -> layers/attn_norm[l]
  model.layers.{l}.self_attn.q_proj      [N*H, D]    -> layers/wq[l] = W.T.reshape(D, N, H)
  model.layers.{l}.self_attn.k_proj      [K*H, D]    -> layers/wk[l] = W.T.reshape(D, K, H)
  model.layers.{l}.self_attn.v_proj      [K*H, D]    -> layers/wv[l] = W.T.reshape(D, K, H)
  model.layers.{l}.self_attn.o_proj      [D, N*H]    -> layers/wo[l] = W.T.reshape(N, H, D)
  model.layers.{l}.post_attention_layernorm [D]      -> layers/mlp_norm[l]
  model.layers.{l}.mlp.gate_proj         [F, D]      -> layers/w_gate[l] = W.T
  model.layers.{l}.mlp.up_proj           [F, D]      -> layers/w_up[l] = W.T
  model.layers.{l}.mlp.down_proj         [D, F]      -> layers/w_down[l] = W.T
  model.norm.weight                      [D]         -> final_norm
  lm_head.weight                         [V, D]      -> lm_head = W.T  (absent when tied)

HF-layout q/k weights pair dimension i with i + H/2 (rotate-half RoPE), which is what
``model.llama.rope`` implements, so no permutation is needed here (Meta's original checkpoints
need one: ``checkpoint/meta.py``).

Loading streams: each stacked ``[L, ...]`` tensor is built one parameter at a time, layer by layer,
straight into the host buffers of the device shards it is placed on (``mesh`` given: the
``NamedSharding`` of ``sharding.param_shardings``; otherwise the default device), then handed to
``jax.make_array_from_callback`` and dropped. Peak host memory is about one stacked tensor (less
on multi-host meshes, where a host only builds the shards of its own devices) beyond what the
devices hold. Only safetensors are read: pickle-based ``pytorch_model.bin`` files are refused.

Every problem with a checkpoint raises ``CheckpointError`` whose message names the file and the
tensor or config key at fault; nothing is silently reshaped, truncated or dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from selfreward_jax import distributed
from selfreward_jax import sharding as shd
from selfreward_jax.model import llama
from selfreward_jax.model.llama import LlamaConfig

PathLike = Union[str, os.PathLike]
DTypeLike = Any  # "float32" | "bfloat16" | "float16" | a numpy/jax dtype

CONFIG_FILE = "config.json"
SAFE_FILE = "model.safetensors"
SAFE_INDEX_FILE = "model.safetensors.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")

# Tensors some checkpoints carry that hold nothing we need (recomputed from the config).
HARMLESS_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# safetensors dtype code <-> numpy dtype name (float dtypes only: anything else is refused).
_SAFE_TO_NP = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
_NP_TO_SAFE = {v: k for k, v in _SAFE_TO_NP.items()}
PARAM_DTYPES = ("float32", "bfloat16", "float16")


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as the model it claims to be. The message names the file and
  the tensor or config key."""


# ---- config ---------------------------------------------------------------------------------------

def _rope_theta_from_hf(hf: Mapping[str, Any], source: str) -> float:
  """rope_theta from ``rope_parameters`` (transformers 5) or top-level ``rope_theta`` (older).

  Only Llama 2's plain RoPE is implemented: any other rope type or scaling is refused.
  """
  def refuse(key, value):
    raise CheckpointError(
        f"{source}: key {key!r} = {value!r} is not supported: this library implements only "
        f"Llama 2's plain RoPE (rope_type 'default', no rope scaling)")

  params = hf.get("rope_parameters")
  scaling = hf.get("rope_scaling")
  theta = hf.get("rope_theta")
  for key, value in (("rope_parameters", params), ("rope_scaling", scaling)):
    if value is None:
      continue
    if not isinstance(value, Mapping):
      refuse(key, value)
    rope_type = value.get("rope_type", value.get("type", "default"))
    if rope_type != "default":
      refuse(f"{key}.rope_type", rope_type)
    extra = {k: v for k, v in value.items() if k not in ("rope_type", "type", "rope_theta")}
    if extra.get("partial_rotary_factor", 1.0) == 1.0:
      extra.pop("partial_rotary_factor", None)
    if extra:
      refuse(f"{key}.{sorted(extra)[0]}", extra[sorted(extra)[0]])
    if "rope_theta" in value:
      if theta is not None and float(theta) != float(value["rope_theta"]):
        raise CheckpointError(f"{source}: rope_theta={theta!r} disagrees with "
                              f"{key}.rope_theta={value['rope_theta']!r}")
      theta = value["rope_theta"]
  return float(10000.0 if theta is None else theta)


def config_from_hf(hf_config: Mapping[str, Any], *, source: str = CONFIG_FILE,
                   **overrides: Any) -> LlamaConfig:
  """``LlamaConfig`` from the contents of an HF Llama ``config.json``.

  Args:
    hf_config: the parsed config.json (transformers 4.x or 5.x layout).
    source: path used in error messages.
    **overrides: ``LlamaConfig`` fields to set afterwards (e.g. ``compute_dtype``, ``max_seq_len``,
      ``param_dtype``, ``remat``).

  Missing keys take the defaults of ``transformers.LlamaConfig`` (rms_norm_eps 1e-6, rope_theta
  1e4, max_position_embeddings 2048, untied). Raises ``CheckpointError`` naming ``source`` and the
  key for anything our model does not implement (another model_type, attention/MLP biases, an
  activation other than silu, RoPE scaling).
  """
  hf = dict(hf_config)

  def need(key):
    if key not in hf or hf[key] is None:
      raise CheckpointError(f"{source}: required key {key!r} is missing")
    return hf[key]

  def refuse(key, allowed):
    raise CheckpointError(f"{source}: key {key!r} = {hf.get(key)!r} is not supported "
                          f"(this library implements Llama 2: {allowed})")

  if hf.get("model_type") != "llama":
    refuse("model_type", "model_type 'llama'")
  archs = hf.get("architectures")
  if archs is not None and "LlamaForCausalLM" not in archs:
    refuse("architectures", "['LlamaForCausalLM']")
  if hf.get("hidden_act", "silu") != "silu":
    refuse("hidden_act", "'silu'")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key, False):
      refuse(key, "false")
  dim, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
  head_dim = hf.get("head_dim")
  if head_dim is not None and int(head_dim) == dim // n_heads and dim % n_heads == 0:
    head_dim = None  # the default: keep LlamaConfig canonical
  kw = dict(
      vocab_size=int(hf.get("vocab_size", 32000)),
      dim=dim,
      n_layers=int(need("num_hidden_layers")),
      n_heads=n_heads,
      n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
      ffn_dim=int(need("intermediate_size")),
      head_dim=None if head_dim is None else int(head_dim),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      rope_theta=_rope_theta_from_hf(hf, source),
      max_seq_len=int(hf.get("max_position_embeddings", 2048)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
  )
  kw.update(overrides)
  try:
    return LlamaConfig(**kw)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{source}: {e}") from None


def config_to_hf(config: LlamaConfig, *, dtype: Optional[DTypeLike] = None,
                 bos_token_id: int = 1, eos_token_id: int = 2) -> Dict[str, Any]:
  """config.json contents for ``config`` (loadable by ``transformers.LlamaForCausalLM``).

  ``dtype`` is the dtype written in the file (default ``config.param_dtype``). ``dropout_rate`` has
  no HF equivalent and is not exported.
  """
  c = config
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": c.vocab_size,
      "hidden_size": c.dim,
      "intermediate_size": c.ffn_dim,
      "num_hidden_layers": c.n_layers,
      "num_attention_heads": c.n_heads,
      "num_key_value_heads": c.n_kv_heads,
      "head_dim": c.hd,
      "hidden_act": "silu",
      "rms_norm_eps": c.norm_eps,
      "rope_parameters": {"rope_type": "default", "rope_theta": float(c.rope_theta)},
      "max_position_embeddings": c.max_seq_len,
      "tie_word_embeddings": c.tie_embeddings,
      "attention_bias": False,
      "attention_dropout": 0.0,
      "mlp_bias": False,
      "bos_token_id": bos_token_id,
      "eos_token_id": eos_token_id,
      "initializer_range": 0.02,
      "pretraining_tp": 1,
      "use_cache": True,
      "dtype": _dtype_name(dtype if dtype is not None else c.param_dtype),
  }


def _dtype_name(dtype: DTypeLike) -> str:
  """Canonical numpy name of a float parameter dtype ("float32", "bfloat16", "float16")."""
  try:
    name = np.dtype(dtype).name
  except TypeError:
    name = str(dtype)
  if name not in PARAM_DTYPES:
    raise ValueError(f"dtype {dtype!r}: allowed {PARAM_DTYPES}")
  return name


# ---- the tensor table -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One parameter and its HF counterpart.

  Attributes:
    path: key path in our pytree, e.g. ("layers", "wq").
    hf_name: HF tensor name; for stacked parameters a template with ``{l}`` for the layer.
    hf_shape: HF shape (one layer's for stacked parameters).
    to_ours: HF-layout array -> our layout (one layer for stacked parameters).
    to_hf: the inverse.
    config_keys: config.json keys that determine the shape (named in shape errors).
  """

  path: Tuple[str, ...]
  hf_name: str
  hf_shape: Tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  config_keys: Tuple[str, ...]

  @property
  def stacked(self) -> bool:
    return "{l}" in self.hf_name

  def name(self, layer: Optional[int] = None) -> str:
    return self.hf_name.format(l=layer) if self.stacked else self.hf_name


def tensor_specs(config: LlamaConfig) -> List[TensorSpec]:
  """The HF <-> ours table for ``config``, in HF file order (embeddings, layers, norm, head)."""
  c = config
  d, n, k, h, f, v = c.dim, c.n_heads, c.n_kv_heads, c.hd, c.ffn_dim, c.vocab_size
  ident = lambda w: w
  transpose = lambda w: w.T
  pre = "model.layers.{l}."
  specs = [TensorSpec(("embed",), "model.embed_tokens.weight", (v, d), ident, ident,
                      ("vocab_size", "hidden_size"))]

  def lin_in(heads):  # [heads*H, D] -> [D, heads, H]
    return (lambda w: w.T.reshape(d, heads, h)), (lambda w: w.reshape(d, heads * h).T)

  norm_keys = ("hidden_size",)
  q_to, q_from = lin_in(n)
  kv_to, kv_from = lin_in(k)
  specs += [
      TensorSpec(("layers", "attn_norm"), pre + "input_layernorm.weight", (d,), ident, ident,
                 norm_keys),
      TensorSpec(("layers", "wq"), pre + "self_attn.q_proj.weight", (n * h, d), q_to, q_from,
                 ("num_attention_heads", "head_dim", "hidden_size")),
      TensorSpec(("layers", "wk"), pre + "self_attn.k_proj.weight", (k * h, d), kv_to, kv_from,
                 ("num_key_value_heads", "head_dim", "hidden_size")),
      TensorSpec(("layers", "wv"), pre + "self_attn.v_proj.weight", (k * h, d), kv_to, kv_from,
                 ("num_key_value_heads", "head_dim", "hidden_size")),
      TensorSpec(("layers", "wo"), pre + "self_attn.o_proj.weight", (d, n * h),
                 lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T,
                 ("hidden_size", "num_attention_heads", "head_dim")),
      TensorSpec(("layers", "mlp_norm"), pre + "post_attention_layernorm.weight", (d,), ident,
                 ident, norm_keys),
      TensorSpec(("layers", "w_gate"), pre + "mlp.gate_proj.weight", (f, d), transpose, transpose,
                 ("intermediate_size", "hidden_size")),
      TensorSpec(("layers", "w_up"), pre + "mlp.up_proj.weight", (f, d), transpose, transpose,
                 ("intermediate_size", "hidden_size")),
      TensorSpec(("layers", "w_down"), pre + "mlp.down_proj.weight", (d, f), transpose, transpose,
                 ("hidden_size", "intermediate_size")),
      TensorSpec(("final_norm",), "model.norm.weight", (d,), ident, ident, norm_keys),
  ]
  if not c.tie_embeddings:
    specs.append(TensorSpec(("lm_head",), "lm_head.weight", (v, d), transpose, transpose,
                            ("vocab_size", "hidden_size")))
  return specs


def expected_tensors(config: LlamaConfig) -> Dict[str, Tuple[TensorSpec, Optional[int]]]:
  """{HF tensor name: (spec, layer or None)} for every tensor a checkpoint of ``config`` holds."""
  out = {}
  for spec in tensor_specs(config):
    for layer in (range(config.n_layers) if spec.stacked else [None]):
      out[spec.name(layer)] = (spec, layer)
  return out


# ---- assembling (shared with checkpoint/meta.py) --------------------------------------------------

def _index_key(index: Tuple[slice, ...], shape: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
  """A hashable (start, stop) per dimension for a shard index."""
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"strided shard index {index} is not supported")
    out.append((start, stop))
  return tuple(out)


def _to_sharded(shape: Tuple[int, ...], np_dtype: np.dtype, sharding: jax.sharding.Sharding,
                layer_fn: Optional[Callable[[int], np.ndarray]],
                whole_fn: Optional[Callable[[], np.ndarray]]) -> jax.Array:
  """Builds one parameter directly into the host buffers of its addressable shards.

  Stacked parameters (``layer_fn(l)`` -> one layer in our layout) are filled layer by layer into
  one buffer per distinct shard index of this process's devices (replicas share a buffer), so the
  host never holds more than those shards plus one layer. Unstacked ones come whole from
  ``whole_fn()``. Each device receives only its slice (``jax.make_array_from_callback``).
  """
  index_map = sharding.addressable_devices_indices_map(shape)
  keys = {_index_key(idx, shape) for idx in index_map.values()}
  if layer_fn is None:
    full = np.asarray(whole_fn()).astype(np_dtype, copy=False)
    bufs = {key: full[tuple(slice(a, b) for a, b in key)] for key in keys}
  else:
    bufs = {key: np.empty([b - a for a, b in key], np_dtype) for key in keys}
    for layer in range(shape[0]):
      layer_arr = None
      for key, buf in bufs.items():
        (l0, l1), rest = key[0], key[1:]
        if l0 <= layer < l1:
          if layer_arr is None:
            layer_arr = np.asarray(layer_fn(layer)).astype(np_dtype, copy=False)
          buf[layer - l0] = layer_arr[tuple(slice(a, b) for a, b in rest)]
      del layer_arr
  array = jax.make_array_from_callback(shape, sharding, lambda idx: bufs[_index_key(idx, shape)])
  bufs.clear()
  return array


def assemble_params(config: LlamaConfig, read_hf: Callable[[str], np.ndarray],
                    mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
  """Builds our param pytree from HF-layout tensors, one parameter at a time.

  Args:
    config: target architecture; ``config.param_dtype`` is the dtype of the result.
    read_hf: HF tensor name -> array of exactly the HF shape (validated by the caller), any float
      dtype. Called once per tensor.
    mesh: place each parameter on its ``sharding.param_shardings(config, mesh)`` sharding; None =
      the default device.
  """
  np_dtype = np.dtype(config.pdtype)
  shapes = llama.param_shapes(config)
  if mesh is not None:
    shardings = shd.param_shardings(config, mesh)
  else:
    single = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: single, shapes, is_leaf=lambda x: isinstance(x, tuple))
  params: Dict[str, Any] = {"layers": {}}
  for spec in tensor_specs(config):
    target = shapes
    sharding = shardings
    for p in spec.path:
      target, sharding = target[p], sharding[p]
    if spec.stacked:
      array = _to_sharded(tuple(target), np_dtype, sharding,
                          lambda layer, s=spec: s.to_ours(read_hf(s.name(layer))), None)
    else:
      array = _to_sharded(tuple(target), np_dtype, sharding, None,
                          lambda s=spec: s.to_ours(read_hf(s.name())))
    dest = params
    for p in spec.path[:-1]:
      dest = dest[p]
    dest[spec.path[-1]] = array
  return params


# ---- reading safetensors --------------------------------------------------------------------------

def read_safetensors_raw(filename: PathLike, name: str) -> np.ndarray:
  """Reads one tensor by parsing the safetensors header ourselves (bf16 as ``ml_dtypes.bfloat16``).

  A fallback for safetensors versions whose numpy framework cannot return bfloat16; the format is
  an 8-byte little-endian header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``,
  then the raw little-endian data.
  """
  with open(filename, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
    if name not in header:
      raise CheckpointError(f"{filename}: tensor {name!r} not found")
    info = header[name]
    if info["dtype"] not in _SAFE_TO_NP:
      raise CheckpointError(f"{filename}: tensor {name!r} has dtype {info['dtype']}, not a float")
    begin, end = info["data_offsets"]
    f.seek(8 + n + begin)
    data = f.read(end - begin)
  dtype = np.dtype(_SAFE_TO_NP[info["dtype"]]).newbyteorder("<")
  return np.frombuffer(data, dtype).reshape(info["shape"])


@dataclasses.dataclass
class _Found:
  file: str
  shape: Tuple[int, ...]
  dtype: str


def _files_of(path: str) -> Tuple[List[str], Dict[str, str], str]:
  """(shard file names, {tensor: file listed in the index}, description of where tensors live)."""
  index_path = os.path.join(path, SAFE_INDEX_FILE)
  single_path = os.path.join(path, SAFE_FILE)
  if os.path.exists(index_path):
    try:
      with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{index_path}: invalid JSON: {e}") from None
    weight_map = index.get("weight_map") if isinstance(index, Mapping) else None
    if not isinstance(weight_map, Mapping) or not weight_map:
      raise CheckpointError(f"{index_path}: key 'weight_map' is missing or empty")
    files = sorted(set(weight_map.values()))
    for fname in files:
      if os.path.basename(fname) != fname:
        raise CheckpointError(f"{index_path}: shard {fname!r} must be a plain file name")
      if not os.path.isfile(os.path.join(path, fname)):
        tensors = sorted(t for t, fn in weight_map.items() if fn == fname)
        shown = ", ".join(tensors[:5])
        if len(tensors) > 5:
          shown += f", ... ({len(tensors)} tensors)"
        raise CheckpointError(f"{index_path}: lists shard file {os.path.join(path, fname)} which "
                              f"does not exist (expected to hold {shown})")
    return files, dict(weight_map), index_path
  if os.path.exists(single_path):
    return [SAFE_FILE], {}, single_path
  for fname in PICKLE_FILES:
    if os.path.exists(os.path.join(path, fname)):
      raise CheckpointError(
          f"{os.path.join(path, fname)}: refusing to load a pickle-based PyTorch checkpoint "
          f"(unpickling can execute arbitrary code). Convert it to safetensors once, in an "
          f"environment you trust, e.g. `python -c \"import transformers; "
          f"transformers.LlamaForCausalLM.from_pretrained('{path}').save_pretrained('OUT_DIR')\"` "
          f"(writes model.safetensors), or use the safetensors files most Hub repos already ship.")
  listing = sorted(os.listdir(path))
  raise CheckpointError(f"{path}: no {SAFE_FILE} or {SAFE_INDEX_FILE} found "
                        f"(directory holds: {listing[:20]})")


def _open_file(stack: contextlib.ExitStack, filename: str):
  from safetensors import safe_open
  try:
    return stack.enter_context(safe_open(filename, framework="numpy"))
  except Exception as e:  # safetensors raises its own error type for truncated/corrupt files
    raise CheckpointError(f"{filename}: cannot read safetensors file ({type(e).__name__}: {e}); "
                          f"is it truncated or incompletely downloaded?") from None


def _scan(handles: Mapping[str, Any]) -> Dict[str, _Found]:
  """{tensor name: where, shape, dtype} over all files, from headers only (no data read)."""
  found: Dict[str, _Found] = {}
  for filename, handle in handles.items():
    for name in handle.keys():
      if name in found:
        raise CheckpointError(f"{filename}: tensor {name!r} is also in {found[name].file}")
      sl = handle.get_slice(name)
      found[name] = _Found(filename, tuple(int(x) for x in sl.get_shape()), str(sl.get_dtype()))
  return found


def _get(handle: Any, filename: str, name: str, safe_dtype: str) -> np.ndarray:
  """One tensor as numpy (bf16 as ``ml_dtypes.bfloat16``)."""
  try:
    arr = handle.get_tensor(name)
  except Exception:  # numpy framework without bf16 support in this safetensors version
    return read_safetensors_raw(filename, name)
  if np.dtype(arr.dtype).name != _SAFE_TO_NP[safe_dtype]:
    return read_safetensors_raw(filename, name)
  return arr


def _layer_indices(names: Sequence[str]) -> List[int]:
  return sorted({int(m.group(1)) for m in map(re.compile(r"^model\.layers\.(\d+)\.").match, names)
                 if m})


def _validate(config: LlamaConfig, found: Mapping[str, _Found], listed: Mapping[str, str],
              where: str, config_path: str) -> None:
  """Checks names, layer count, shapes and dtypes against ``config`` before any data is read."""
  expected = expected_tensors(config)
  layers = _layer_indices(list(found))
  if layers and layers != list(range(config.n_layers)):
    raise CheckpointError(
        f"{config_path}: key 'num_hidden_layers' = {config.n_layers} disagrees with the weights in "
        f"{where}: they hold layers {layers[0]}..{layers[-1]} ({len(layers)} layers"
        f"{'' if layers == list(range(len(layers))) else ', with gaps'})")
  missing = [n for n in expected if n not in found]
  if missing:
    name = missing[0]
    place = (f"{listed[name]} (where {where} places it)" if name in listed
             else f"{where}" + (" (not listed in its weight_map)" if listed else ""))
    more = f"; {len(missing) - 1} more missing, e.g. {missing[1:4]}" if len(missing) > 1 else ""
    raise CheckpointError(f"tensor {name!r} not found in {place}{more}")
  extra = [n for n in found if n not in expected and not HARMLESS_TENSORS.search(n)
           and not (n == "lm_head.weight" and config.tie_embeddings)]
  if extra:
    shown = ", ".join(f"{n!r} (in {found[n].file})" for n in extra[:5])
    raise CheckpointError(f"unexpected tensors for a Llama with {config_path} settings: {shown}"
                          f"{f' and {len(extra) - 5} more' if len(extra) > 5 else ''}; "
                          f"refusing to drop weights silently")
  for name, (spec, _) in expected.items():
    got = found[name]
    if got.dtype not in _SAFE_TO_NP:
      raise CheckpointError(f"{got.file}: tensor {name!r} has dtype {got.dtype}; expected a float "
                            f"dtype ({sorted(_SAFE_TO_NP)})")
    if got.shape != spec.hf_shape:
      raise CheckpointError(
          f"{got.file}: tensor {name!r} has shape {list(got.shape)}, expected "
          f"{list(spec.hf_shape)} from {config_path} keys {list(spec.config_keys)}")


def load_hf_checkpoint(path: PathLike, *, dtype: Optional[DTypeLike] = "float32",
                       mesh: Optional[jax.sharding.Mesh] = None,
                       config_overrides: Optional[Mapping[str, Any]] = None
                       ) -> Tuple[LlamaConfig, Dict[str, Any]]:
  """Loads an HF Llama directory (config.json + model.safetensors or a sharded index).

  Args:
    path: the checkpoint directory (as written by ``save_pretrained`` / ``save_hf_checkpoint``).
    dtype: parameter dtype ("float32", "bfloat16", "float16"), or None to keep the file's dtype
      (all tensors must share one). Sets ``config.param_dtype``.
    mesh: a (data, fsdp, tensor) mesh: each parameter is created with its
      ``sharding.param_shardings`` sharding, every device receiving only its slice. None = the
      default device.
    config_overrides: extra ``LlamaConfig`` fields (e.g. ``compute_dtype``, ``max_seq_len``,
      ``remat``); not ``param_dtype`` (use ``dtype``).

  Returns:
    ``(config, params)`` with params as in ``model.llama.init_params``.

  Raises:
    CheckpointError: missing directory/config/shard, pickle-only checkpoint, missing/extra tensor,
      shape/dtype mismatch, tied head that differs from the embeddings, unsupported config. The
      message names the file and the tensor or key.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: checkpoint directory not found"
                          + (" (it is a file; pass its directory)" if os.path.isfile(path) else ""))
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path}: not found (an HF checkpoint directory needs its "
                          f"config.json)")
  try:
    with open(config_path, encoding="utf-8") as f:
      hf_config = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{config_path}: invalid JSON: {e}") from None
  overrides = dict(config_overrides or {})
  if "param_dtype" in overrides:
    raise CheckpointError("config_overrides: set the parameter dtype with dtype=, not param_dtype")
  config = config_from_hf(hf_config, source=config_path, **overrides)
  files, listed, where = _files_of(path)

  with contextlib.ExitStack() as stack:
    handles = {os.path.join(path, fn): _open_file(stack, os.path.join(path, fn)) for fn in files}
    listed = {name: os.path.join(path, fn) for name, fn in listed.items()}
    found = _scan(handles)
    _validate(config, found, listed, where, config_path)

    expected = expected_tensors(config)
    if dtype is None:
      file_dtypes = sorted({found[n].dtype for n in expected})
      if len(file_dtypes) != 1 or _SAFE_TO_NP[file_dtypes[0]] not in PARAM_DTYPES:
        raise CheckpointError(f"{where}: tensors have dtypes {file_dtypes}; pass dtype= explicitly")
      config = config.replace(param_dtype=_SAFE_TO_NP[file_dtypes[0]])
    else:
      config = config.replace(param_dtype=_dtype_name(dtype))

    def read_hf(name: str) -> np.ndarray:
      got = found[name]
      return _get(handles[got.file], got.file, name, got.dtype)

    if config.tie_embeddings and "lm_head.weight" in found:
      if not np.array_equal(read_hf("lm_head.weight"), read_hf("model.embed_tokens.weight")):
        raise CheckpointError(
            f"{found['lm_head.weight'].file}: tensor 'lm_head.weight' differs from "
            f"'model.embed_tokens.weight' but {config_path} key 'tie_word_embeddings' is true; "
            f"set it to false to use the separate head")
    params = assemble_params(config, read_hf, mesh)
  return config, params


# ---- writing --------------------------------------------------------------------------------------

_take_layer = jax.jit(lambda a, i: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False))


def _host(array: Any, layer: Optional[int]) -> np.ndarray:
  """One parameter (or one layer of a stacked one) gathered to host memory."""
  if isinstance(array, jax.Array):
    if layer is not None:
      array = _take_layer(array, layer)
    if not array.is_fully_addressable:  # spread over several processes: a collective gather
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))
  array = np.asarray(array)
  return array[layer] if layer is not None else array


def _check_params(config: LlamaConfig, params: Mapping[str, Any]) -> None:
  shapes = llama.param_shapes(config)
  want = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(
      shapes, is_leaf=lambda x: isinstance(x, tuple))[0]}
  got = {jax.tree_util.keystr(p): tuple(np.shape(x))
         for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  if set(want) != set(got):
    raise ValueError(f"params do not match the config: missing {sorted(set(want) - set(got))}, "
                     f"unexpected {sorted(set(got) - set(want))}")
  for key, shape in want.items():
    if got[key] != tuple(shape):
      raise ValueError(f"params{key} has shape {got[key]}, config implies {tuple(shape)}")


def _safetensors_header(entries: Sequence[Tuple[str, Tuple[int, ...], str]]) -> Tuple[bytes, int]:
  """(header bytes incl. the 8-byte length, data size) for tensors written in ``entries`` order."""
  header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, shape, np_name in entries:
    nbytes = math.prod(shape) * np.dtype(np_name).itemsize
    header[name] = {"dtype": _NP_TO_SAFE[np_name], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
  blob += b" " * (-len(blob) % 8)
  return struct.pack("<Q", len(blob)) + blob, offset


def _fsync_dir(path: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def save_hf_checkpoint(path: PathLike, config: LlamaConfig, params: Mapping[str, Any], *,
                       dtype: Optional[DTypeLike] = None, max_shard_bytes: int = 5 * 2**30,
                       tokenizer_path: Optional[PathLike] = None,
                       write_generation_config: bool = True, overwrite: bool = False) -> str:
  """Writes ``params`` as an HF Llama checkpoint loadable by ``LlamaForCausalLM.from_pretrained``.

  Files: config.json, model.safetensors (or ``model-0000i-of-0000N.safetensors`` shards and
  model.safetensors.index.json when the weights exceed ``max_shard_bytes``), generation_config.json
  (bos 1, eos 2) unless disabled, and tokenizer.model when ``tokenizer_path`` is given.

  The safetensors files are streamed: headers are computed from the config, then one tensor (one
  layer of a stacked parameter) at a time is gathered to host (``jax.device_get``, or
  ``process_allgather`` for arrays spread over several processes), cast, converted to HF layout
  and written. In a multi-process run every process must call it (the gathers are collectives);
  process 0 writes the files. Everything goes to a temp directory next to ``path`` that is renamed into place at the
  end, so a crash never leaves a half-written checkpoint at ``path``.

  Args:
    path: output directory. If it exists and is not empty, ``overwrite`` must be True (it is then
      replaced as a whole).
    config: the model's config (``param_shapes(config)`` must match ``params``).
    params: our param pytree (jax or numpy arrays).
    dtype: dtype written ("float32", "bfloat16", "float16"); default: the dtype of
      ``params["embed"]``.
    max_shard_bytes: largest shard file (a single larger tensor gets a shard of its own).

  Returns:
    ``path``.
  """
  path = os.path.abspath(os.fspath(path))
  _check_params(config, params)
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)) and not overwrite:
    raise FileExistsError(f"{path}: exists and is not empty; pass overwrite=True to replace it")
  out_dtype = _dtype_name(dtype if dtype is not None else np.dtype(params["embed"].dtype))
  if sys.byteorder != "little":  # pragma: no cover
    raise NotImplementedError("safetensors writing assumes a little-endian host")

  if distributed.is_multiprocess():
    distributed.barrier(f"save_hf_checkpoint start {os.path.basename(path)}")  # checks done
    if not distributed.is_writer():  # take part in the per-tensor gathers; process 0 writes
      for spec, layer in expected_tensors(config).values():
        leaf = params
        for p in spec.path:
          leaf = leaf[p]
        _host(leaf, layer)
      error = distributed.broadcast_json(None)
      if error:
        raise RuntimeError(f"save_hf_checkpoint {path}: process 0 failed: {error}")
      return path
    try:
      _save_hf_files(path, config, params, out_dtype, max_shard_bytes, tokenizer_path,
                     write_generation_config)
    except Exception as e:
      distributed.broadcast_json(f"{type(e).__name__}: {e}")
      raise
    distributed.broadcast_json(None)
    return path
  return _save_hf_files(path, config, params, out_dtype, max_shard_bytes, tokenizer_path,
                        write_generation_config)


def _save_hf_files(path, config, params, out_dtype, max_shard_bytes, tokenizer_path,
                   write_generation_config) -> str:
  """``save_hf_checkpoint``'s writing (this process writes every file)."""
  # Plan the shards: HF order, greedy packing.
  itemsize = np.dtype(out_dtype).itemsize
  items: List[Tuple[TensorSpec, Optional[int]]] = []
  for name, (spec, layer) in expected_tensors(config).items():
    items.append((spec, layer))
  shards: List[List[Tuple[TensorSpec, Optional[int]]]] = [[]]
  size = 0
  for item in items:
    nbytes = math.prod(item[0].hf_shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(item)
    size += nbytes
  n = len(shards)
  names = [SAFE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
  try:
    os.chmod(tmp, 0o755)
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
      entries = [(spec.name(layer), spec.hf_shape, out_dtype) for spec, layer in shard]
      header, nbytes = _safetensors_header(entries)
      total += nbytes
      with open(os.path.join(tmp, fname), "wb") as f:
        f.write(header)
        for spec, layer in shard:
          leaf = params
          for p in spec.path:
            leaf = leaf[p]
          arr = spec.to_hf(_host(leaf, layer).astype(out_dtype, copy=False))
          arr = np.ascontiguousarray(arr)
          assert arr.shape == spec.hf_shape, (spec.name(layer), arr.shape)
          f.write(arr.reshape(-1).view(np.uint8).data)
          weight_map[spec.name(layer)] = fname
          del arr
        f.flush()
        os.fsync(f.fileno())

    def write_json(fname, obj):
      with open(os.path.join(tmp, fname), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())

    write_json(CONFIG_FILE, config_to_hf(config, dtype=out_dtype))
    if n > 1:
      write_json(SAFE_INDEX_FILE, {"metadata": {"total_size": total},
                                   "weight_map": dict(sorted(weight_map.items()))})
    if write_generation_config:
      write_json(GENERATION_CONFIG_FILE, {"bos_token_id": 1, "eos_token_id": 2})
    if tokenizer_path is not None:
      shutil.copyfile(os.fspath(tokenizer_path), os.path.join(tmp, "tokenizer.model"))
    _fsync_dir(tmp)

    old = None
    if os.path.exists(path):
      if os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
      else:
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.replace(path, os.path.join(old, "x"))
    os.replace(tmp, path)
    _fsync_dir(parent)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path
