"""Per-device memory planner: will this config fit this mesh, and which mesh should a slice use?

  python -m selfreward_jax.plan --config=configs/llama2_70b.py                  # every common slice
  python -m selfreward_jax.plan --config=configs/llama2_70b.py --slice=v4-128   # options on one slice
  python -m selfreward_jax.plan --config=configs/llama2_70b.py --mesh=1,8,8     # one mesh, in detail
  python -m selfreward_jax.plan --config=configs/llama2_70b.py --devices=64 --batch=32 --seq=4096

Nothing is allocated: parameter and optimizer-state figures come from ``jax.eval_shape`` of the
real optimizer (``train.optim.make_optimizer``) and the real shardings (``train.state.state_shardings``
through ``sharding.logical_to_spec``) on a ``jax.sharding.AbstractMesh`` of the requested shape; a
device count is all it needs (one host or many). Per-device bytes of a leaf = its shard shape
times its item size (the rules only ever split a dimension evenly).

The two phases of a run share one mesh and one set of parameters and never overlap in time:

* train (SFT / DPO): float32 master params + AdamW moments (2 x float32) + float32 grads (a second
  copy, the accumulator, when ``microbatches > 1``) + the in-step DPO reference (a params copy,
  only with ``dpo.reference="in_step"``) + activations of one microbatch + transients.
* sample: params + their compute-dtype copy (``Engine.sampling_params``) + the decode state's KV
  cache ``[L, slots, max_decode_length, K, H]`` (slots over data*fsdp, kv heads over tensor, as
  the engine lays it out) + one batched prefill's transients (``max(max_prefill_length, 1024)``
  tokens, the ``Sampler``'s default ``prefill_tokens``).

Activations (per device; ``b`` = rows per microbatch / (data*fsdp), ``T`` = padded length, query
heads ``n``, kv heads ``k``, FFN ``f`` and vocab ``v`` divided by ``tensor`` where it divides them;
``d``, ``h`` unsharded; ``c`` = compute-dtype bytes). How: one ``llama._layer`` under the config's
``jax.checkpoint`` policy is traced on abstract per-device shapes ``[b, T, ...]`` and JAX's own list
of saved residuals (``saved_residuals``) is summed: exact for whatever the model code saves, and
nothing is allocated. Times ``L`` (the scan stacks them), plus one layer's ``none`` set again (the
layer being recomputed / differentiated in the backward pass), plus the loss head:
``HEAD_F32_COPIES`` float32 ``[b, T, v]`` buffers (logits, their cotangent). When tracing is not
possible, this per-token-per-layer formula (what the committed model saves) is used instead:

  full           c*d                                   (the layer input, saved by the scan)
  dots_no_batch  c*d + 4*(n+2k)*h + 4*d + 8*f          (float32 outputs of the projections)
  dots           dots_no_batch + 4*n*T + 4*n*h         (+ attention scores and P@V: batched dots)
  none           2*(8+c)*d + 8*h + c*(n+2k)*h + (9+c)*n*T + c*n*h + (20+c)*f + 16 + 8*n
                 (+ n*T + 2*d bool dropout masks when dropout is on; + the compute-dtype copy of
                 each layer's weights when c < 4)

Validation (``tests/test_plan.py``): against XLA's ``compiled.memory_analysis()`` (temp bytes of
the gradient of the SFT loss) on CPU for small models the estimate is 1.0-1.4x XLA's figure
(conservative: XLA fuses and frees early; TPU XLA fuses more still). The attention is
materialised (no flash kernel), hence the ``n*T`` terms: long sequences want ``remat=full``.

Headroom: a mesh "fits" when its peak is at most ``1 - headroom`` of the chip's HBM (default 15%:
XLA's own scratch, collectives' buffers, fragmentation, the compiled programs).

Recommendation: among the (data, fsdp, tensor) factorizations of the slice that fit and whose
microbatch rows divide by data*fsdp (``train.step.check_batch``), the least communication: the
smallest tensor, then the smallest fsdp (the rest goes to pure data parallelism).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh

from selfreward_jax import sharding as shd
from selfreward_jax.model import llama

GiB = 1024 ** 3

# per-chip HBM and how many JAX devices (chips) a slice name means: v4 and v5p names count
# TensorCores (2 per chip, one megacore device), v5e names count chips.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95}
SLICES: Dict[str, Tuple[str, int]] = {
    "v4-8": ("v4", 4), "v4-32": ("v4", 16), "v4-64": ("v4", 32), "v4-128": ("v4", 64),
    "v5e-8": ("v5e", 8), "v5e-16": ("v5e", 16), "v5e-64": ("v5e", 64), "v5e-256": ("v5e", 256),
    "v5p-8": ("v5p", 4), "v5p-16": ("v5p", 8), "v5p-32": ("v5p", 16), "v5p-64": ("v5p", 32),
    "v5p-128": ("v5p", 64),
}
TENSOR_SIZES = (1, 2, 4, 8, 16)
DEFAULT_HEADROOM = 0.15
HEAD_F32_COPIES = 2  # float32 [b, T, v] buffers of the loss head (calibrated, see module doc)
# the engine's KV-cache logical axes (sampling/engine.py _CACHE_AXES; not imported: that module
# pulls JetStream and TensorFlow)
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_seq", "head_dim")
PREFIX_CACHE_AXES = ("layers", None, "kv_heads", "cache_seq", "head_dim")
# engine.PREFILL_BATCH_TOKENS (not imported: the planner does not load JetStream)
PREFILL_BATCH_TOKENS = 1024


@dataclasses.dataclass(frozen=True)
class Workload:
  """What one phase puts through the model (global sizes, all devices together).

  Attributes:
    rows: sequences per microbatch forward: SFT ``batch_size / microbatches``; DPO twice the pairs
      (chosen and rejected run as one ``[2b, T]`` forward); the planner takes the larger.
    batch_rows: a number both stages' microbatch rows are multiples of (the gcd of SFT rows and
      DPO pairs): the step shards them over data*fsdp, which must divide it.
    seq: padded training length (``train.max_len``).
    microbatches: gradient-accumulation steps per update (> 1 adds an f32 grad accumulator).
    in_step_reference: DPO keeps a frozen params copy in the step.
    dropout: dropout on (adds bool masks to the ``none`` residuals).
    slots, decode_len, prefill_len: the sampler's ``max_concurrent``, ``max_decode_length``,
      ``max_prefill_length``.
  """

  rows: int = 16
  batch_rows: int = 16
  seq: int = 2048
  microbatches: int = 1
  in_step_reference: bool = False
  dropout: bool = False
  slots: int = 32
  decode_len: int = 512
  prefill_len: int = 256


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Per-device bytes of every component on one mesh (see the module docstring)."""

  mesh: Tuple[int, int, int]
  model: llama.LlamaConfig
  workload: Workload
  params: int
  opt_moments: int
  opt_other: int
  grads: int
  reference: int
  activations: int
  recompute: int
  loss_head: int
  layer_weights: int
  kv_cache: int
  sample_transient: int
  batch_ok: bool
  sample_params: int = 0  # the compute-dtype copy of the params the sampler decodes with

  @property
  def n_devices(self) -> int:
    return math.prod(self.mesh)

  @property
  def optimizer(self) -> int:
    return self.opt_moments + self.opt_other

  @property
  def train_state(self) -> int:
    """Params + optimizer state: what the checkpointed ``TrainState`` holds per device."""
    return self.params + self.optimizer

  @property
  def train_peak(self) -> int:
    return (self.train_state + self.grads + self.reference + self.activations + self.recompute
            + self.loss_head + self.layer_weights)

  @property
  def sample_peak(self) -> int:
    return self.params + self.sample_params + self.kv_cache + self.sample_transient

  @property
  def peak(self) -> int:
    return max(self.train_peak, self.sample_peak)

  def fits(self, hbm_bytes: float, headroom: float = DEFAULT_HEADROOM) -> bool:
    return self.batch_ok and self.peak <= (1.0 - headroom) * hbm_bytes

  def rows(self) -> List[Tuple[str, int]]:
    """(label, bytes) in print order; totals included."""
    return [
        ("params (f32 master)", self.params),
        ("adam moments (2 x f32)", self.opt_moments),
        ("grads (f32)" + (" + accumulator" if self.workload.microbatches > 1 else ""), self.grads),
        ("dpo in-step reference", self.reference),
        (f"activations (remat={self.model.remat})", self.activations),
        ("one layer recomputed + backward", self.recompute),
        ("loss head (logits f32)", self.loss_head),
        ("gathered layer weights + grads", self.layer_weights),
        ("= train peak", self.train_peak),
        ("params cast to compute dtype (sampling)", self.sample_params),
        ("kv cache", self.kv_cache),
        ("prefill + decode transients", self.sample_transient),
        ("= sample peak (params + cache + ...)", self.sample_peak),
        ("= peak", self.peak),
    ]

  def format(self, hbm_bytes: Optional[float] = None, headroom: float = DEFAULT_HEADROOM) -> str:
    d, f, t = self.mesh
    lines = [f"mesh (data={d}, fsdp={f}, tensor={t}) on {self.n_devices} devices: per-device GiB"]
    for label, b in self.rows():
      if b or label.startswith("="):
        lines.append(f"  {label:40s} {b / GiB:9.2f}")
    if not self.batch_ok:
      lines.append(f"  ! {self.workload.batch_rows} rows per microbatch do not divide by "
                   f"data*fsdp = {d * f}")
    if hbm_bytes:
      budget = (1 - headroom) * hbm_bytes
      verdict = "fits" if self.fits(hbm_bytes, headroom) else "does NOT fit"
      lines.append(f"  {verdict}: {self.peak / GiB:.2f} GiB of {budget / GiB:.2f} GiB usable "
                   f"({hbm_bytes / GiB:.0f} GiB HBM, {headroom:.0%} headroom)")
    return "\n".join(lines)


# ---- pieces ----------------------------------------------------------------------------------------

def abstract_mesh(shape: Sequence[int]) -> AbstractMesh:
  """An ``AbstractMesh`` with the (data, fsdp, tensor) axes: shardings without devices."""
  return AbstractMesh(tuple(int(s) for s in shape), shd.MESH_AXES)


def leaf_bytes(shape: Sequence[int], dtype, sharding) -> int:
  """Per-device bytes of one array laid out by ``sharding`` (a NamedSharding)."""
  return math.prod(sharding.shard_shape(tuple(shape))) * jnp.dtype(dtype).itemsize


def tree_bytes(abstract_tree, shardings_tree) -> int:
  """Per-device bytes of a pytree of ``ShapeDtypeStruct`` laid out by a matching sharding tree."""
  leaves = jax.tree.leaves(abstract_tree)
  shs = jax.tree.leaves(shardings_tree)
  assert len(leaves) == len(shs), (len(leaves), len(shs))
  return sum(leaf_bytes(a.shape, a.dtype, s) for a, s in zip(leaves, shs))


def state_bytes(config: llama.LlamaConfig, mesh, tx=None) -> Dict[str, int]:
  """Per-device bytes of the train state's params (f32 master), Adam moments and the rest of the
  optimizer state (counts), from ``eval_shape`` and ``state_shardings`` on ``mesh``."""
  import optax
  from selfreward_jax.train import optim, state as state_lib
  if tx is None:
    tx, _ = optim.make_optimizer(optim.OptimConfig(), total_steps=1)
  sh = state_lib.state_shardings(config, tx, mesh)
  params = state_lib.abstract_param_tree(config)
  opt = jax.eval_shape(tx.init, params)
  is_param = optax.tree_map_params(tx, lambda _: True, opt, transform_non_params=lambda _: False)
  opt_leaves, opt_sh, flags = (jax.tree.leaves(opt), jax.tree.leaves(sh.opt_state),
                               jax.tree.leaves(is_param))
  moments = sum(leaf_bytes(a.shape, a.dtype, s) for a, s, p in zip(opt_leaves, opt_sh, flags) if p)
  other = sum(leaf_bytes(a.shape, a.dtype, s) for a, s, p in zip(opt_leaves, opt_sh, flags)
              if not p)
  return {"params": tree_bytes(params, sh.params), "opt_moments": moments, "opt_other": other}


def _local(size: int, mesh, logical: str) -> int:
  """``size`` divided by the mesh axes ``logical`` maps to (when they divide it)."""
  if mesh is None:
    return size
  spec = shd.logical_to_spec((logical,), (size,), mesh)
  axes = spec[0]
  if axes is None:
    return size
  axes = (axes,) if isinstance(axes, str) else axes
  return size // math.prod(mesh.shape[a] for a in axes)


def residual_bytes_per_token(config: llama.LlamaConfig, policy: str, seq: int, mesh=None,
                             dropout: bool = False) -> int:
  """Bytes one layer saves for the backward pass per token (per device) under ``policy``."""
  c = jnp.dtype(config.cdtype).itemsize
  d, h = config.dim, config.hd
  n = _local(config.n_heads, mesh, "act_heads")
  k = _local(config.n_kv_heads, mesh, "act_kv_heads")
  f = _local(config.ffn_dim, mesh, "act_mlp")
  t = seq
  if policy == "full":
    return c * d
  dots_no_batch = c * d + 4 * (n + 2 * k) * h + 4 * d + 8 * f
  if policy == "dots_no_batch":
    return dots_no_batch
  if policy == "dots":
    return dots_no_batch + 4 * n * t + 4 * n * h
  if policy != "none":
    raise ValueError(f"unknown remat policy {policy!r}; allowed: {llama.REMAT_POLICIES}")
  out = (2 * (8 + c) * d + 8 * h + c * (n + 2 * k) * h + (9 + c) * n * t + c * n * h
         + (20 + c) * f + 16 + 8 * n)
  if dropout:
    out += n * t + 2 * d
  return out


def traced_layer_residual_bytes(config: llama.LlamaConfig, policy: str, rows: int, seq: int,
                                mesh=None) -> Optional[int]:
  """Bytes one ``llama._layer`` saves for the backward pass on one device, as JAX's autodiff
  itself reports them (``saved_residuals``, traced on abstract per-device shapes: nothing is
  allocated) for ``rows`` sequences of ``seq`` tokens under remat ``policy``. Layer weights that
  arrive as arguments are not counted (they are the params); their compute-dtype copies are.

  None when the per-device shapes do not form a valid config (e.g. kv heads replicated while query
  heads are split) or this jax has no ``saved_residuals``: then use ``residual_bytes_per_token``.
  """
  try:
    from jax._src.ad_checkpoint import saved_residuals
  except ImportError:  # pragma: no cover - private API moved
    return None
  n = _local(config.n_heads, mesh, "act_heads")
  k = _local(config.n_kv_heads, mesh, "act_kv_heads")
  f = _local(config.ffn_dim, mesh, "act_mlp")
  if n % k:
    return None
  local = config.replace(n_heads=n, n_kv_heads=k, ffn_dim=f, head_dim=config.hd, n_layers=1,
                         remat=policy, dropout_rate=0.0)
  lp = {name: jax.ShapeDtypeStruct(shape[1:], jnp.float32)
        for name, shape in llama.param_shapes(local)["layers"].items()}
  x = jax.ShapeDtypeStruct((rows, seq, local.dim), local.cdtype)
  pos = jax.ShapeDtypeStruct((rows, seq), jnp.int32)
  mask = jax.ShapeDtypeStruct((rows, seq, seq), jnp.bool_)
  layer = llama._remat(llama._layer, policy)  # pylint: disable=protected-access

  def f_(x, lp, pos, mask):
    return layer(local, x, lp, pos, mask, None, None, None)[0]

  try:
    res = saved_residuals(f_, x, lp, pos, mask)
  except Exception:  # pragma: no cover - an API change: fall back to the formula
    return None
  skip = ("from the argument lp", "from the argument pos", "from the argument mask")
  return sum(a.size * a.dtype.itemsize for a, why in res
             if not why.startswith(skip) and "from a constant" not in why)


def layer_residual_bytes(config: llama.LlamaConfig, policy: str, rows: int, seq: int, mesh=None,
                         dropout: bool = False) -> int:
  """One layer's saved residuals per device: traced (``traced_layer_residual_bytes``), else the
  per-token formula (``residual_bytes_per_token``, + the compute-dtype weight copies of ``none``).
  Dropout masks (only saved without remat) come from the formula either way."""
  traced = traced_layer_residual_bytes(config, policy, rows, seq, mesh)
  extra = 0
  if dropout and policy == "none":
    extra = (_local(config.n_heads, mesh, "act_heads") * seq + 2 * config.dim) * rows * seq
  if traced is not None:
    return traced + extra
  out = residual_bytes_per_token(config, policy, seq, mesh, dropout) * rows * seq
  if policy == "none" and jnp.dtype(config.cdtype).itemsize < 4:
    out += _layer_param_bytes(config, mesh, jnp.dtype(config.cdtype).itemsize, gathered=False)
  return out


def _layer_param_bytes(config: llama.LlamaConfig, mesh, itemsize: int, gathered: bool) -> int:
  """Bytes of one layer's weights per device: sharded as stored, or gathered over data/fsdp
  (what a layer's matmuls see under FSDP: still split over tensor)."""
  shapes = llama.param_shapes(config)["layers"]
  axes = llama.param_axes(config)["layers"]
  rules = ({name: (v if v == "tensor" else None) for name, v in shd.RULES.items()} if gathered
           else shd.RULES)
  total = 0
  for name, shape in shapes.items():
    spec = shd.logical_to_spec(axes[name][1:], shape[1:], mesh, rules)
    total += math.prod(jax.sharding.NamedSharding(mesh, spec).shard_shape(shape[1:])) * itemsize
  return total


def plan(config: llama.LlamaConfig, workload: Workload, mesh_shape: Sequence[int],
         tx=None) -> MemoryPlan:
  """The per-device memory of ``config`` (training numerics: f32 params, its remat and compute
  dtype) running ``workload`` on a (data, fsdp, tensor) mesh of ``mesh_shape``."""
  mesh = abstract_mesh(mesh_shape)
  w = workload
  st = state_bytes(config, mesh, tx)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_ok = w.batch_rows % batch_shards == 0
  b = max(1, -(-w.rows // batch_shards))
  tokens = b * w.seq
  c = jnp.dtype(config.cdtype).itemsize
  v = _local(config.vocab_size, mesh, "act_vocab")

  activations = config.n_layers * layer_residual_bytes(config, config.remat, b, w.seq, mesh,
                                                       w.dropout)
  recompute = layer_residual_bytes(config, "none", b, w.seq, mesh, w.dropout)
  loss_head = HEAD_F32_COPIES * 4 * v * tokens
  layer_weights = (_layer_param_bytes(config, mesh, 2 * c, gathered=True)
                   + _layer_param_bytes(config, mesh, 4, gathered=True))
  grads = st["params"] * (2 if w.microbatches > 1 else 1)
  reference = st["params"] if w.in_step_reference else 0

  # sampling: the decode state's cache, one batched prefill of up to max(t, 1024) tokens (the
  # Sampler's default prefill_tokens: its prefix caches [L, n, K, t, H], counted replicated over
  # the batch axes, its activations and float32 logits) and the pending logits [slots, V] f32
  # (x3 for the top-p sort) and per-step activations (small).
  kv_shape = (config.n_layers, w.slots, config.n_kv_heads, w.decode_len, config.hd)
  kv_spec = shd.logical_to_spec(CACHE_AXES, kv_shape, mesh)
  kv = 2 * leaf_bytes(kv_shape, config.cdtype, jax.sharding.NamedSharding(mesh, kv_spec))
  prefill_tokens = max(w.prefill_len, PREFILL_BATCH_TOKENS)
  pre_shape = (config.n_layers, 1, config.n_kv_heads, prefill_tokens, config.hd)
  pre_spec = shd.logical_to_spec(PREFIX_CACHE_AXES, pre_shape, mesh)
  prefix = 2 * leaf_bytes(pre_shape, config.cdtype, jax.sharding.NamedSharding(mesh, pre_spec))
  slots_local = max(1, -(-w.slots // batch_shards))
  prefill_act = (residual_bytes_per_token(config, "none", w.prefill_len, mesh) * prefill_tokens
                 + 4 * v * prefill_tokens)
  decode = 3 * 4 * config.vocab_size * slots_local
  layer_c = _layer_param_bytes(config, mesh, c, gathered=True)
  sample_transient = prefix + prefill_act + decode + layer_c

  return MemoryPlan(
      mesh=tuple(mesh.shape.values()), model=config, workload=w, params=st["params"],
      opt_moments=st["opt_moments"], opt_other=st["opt_other"], grads=grads, reference=reference,
      activations=activations, recompute=recompute, loss_head=loss_head,
      layer_weights=layer_weights, kv_cache=kv, sample_transient=sample_transient,
      batch_ok=batch_ok,
      # Engine.sampling_params: one compute-dtype copy next to the f32 master params (accelerators)
      sample_params=st["params"] * c // 4 if c < 4 else 0)


def mesh_options(n_devices: int, tensor_sizes: Sequence[int] = TENSOR_SIZES
                 ) -> List[Tuple[int, int, int]]:
  """Every (data, fsdp, tensor) with data*fsdp*tensor = n_devices and tensor in ``tensor_sizes``."""
  out = []
  for t in tensor_sizes:
    if n_devices % t:
      continue
    rest = n_devices // t
    for f in range(1, rest + 1):
      if rest % f == 0:
        out.append((rest // f, f, t))
  return out


def recommend(config: llama.LlamaConfig, workload: Workload, n_devices: int, hbm_bytes: float,
              headroom: float = DEFAULT_HEADROOM, tx=None
              ) -> Tuple[Optional[MemoryPlan], List[MemoryPlan]]:
  """``(best, fitting)``: the plans that fit (ordered smallest tensor, then smallest fsdp) and the
  first of them (None when nothing fits)."""
  if tx is None:
    from selfreward_jax.train import optim
    tx, _ = optim.make_optimizer(optim.OptimConfig(), total_steps=1)
  plans = [plan(config, workload, m, tx) for m in mesh_options(n_devices)]
  fitting = sorted((p for p in plans if p.fits(hbm_bytes, headroom)),
                   key=lambda p: (p.mesh[2], p.mesh[1]))
  return (fitting[0] if fitting else None), fitting


# ---- from a run config ------------------------------------------------------------------------------

def from_run_config(rc, *, batch: Optional[int] = None, seq: Optional[int] = None,
                    slots: Optional[int] = None, decode_len: Optional[int] = None
                    ) -> Tuple[llama.LlamaConfig, Workload]:
  """(training model config, workload) of a ``RunConfig``: the larger of the SFT and DPO steps.

  ``batch`` overrides both stages' batch size (SFT rows / DPO pairs), ``seq`` their max length.
  """
  sft, dpo = rc.sft.train, rc.dpo.train
  model = sft.model_config(rc.model)
  sft_rows = (batch or sft.batch_size) // sft.microbatches
  dpo_pairs = (batch or dpo.batch_size) // dpo.microbatches
  w = Workload(
      rows=max(sft_rows, 2 * dpo_pairs), batch_rows=math.gcd(sft_rows, dpo_pairs), seq=seq or max(sft.max_len, dpo.max_len),
      microbatches=max(sft.microbatches, dpo.microbatches),
      in_step_reference=rc.dpo.reference == "in_step",
      dropout=bool(model.dropout_rate) or bool(dpo.dropout_rate),
      slots=slots or rc.sampler.max_concurrent,
      decode_len=decode_len or rc.sampler.max_decode_length,
      prefill_len=rc.sampler.max_prefill_length)
  return model, w


def _describe(model: llama.LlamaConfig, w: Workload) -> str:
  return (f"model: {model.num_params() / 1e9:.2f}B params, L={model.n_layers} d={model.dim} "
          f"heads={model.n_heads}/{model.n_kv_heads} ffn={model.ffn_dim} vocab={model.vocab_size}; "
          f"remat={model.remat}, compute {model.compute_dtype}, f32 master weights + AdamW\n"
          f"train: {w.rows} sequences x {w.seq} tokens per microbatch forward (DPO runs chosen + "
          f"rejected together), {w.microbatches} microbatch(es)"
          f"{', in-step DPO reference' if w.in_step_reference else ''}\n"
          f"sample: {w.slots} slots x {w.decode_len} tokens KV cache, prefill up to {w.prefill_len}")


def slice_table(model: llama.LlamaConfig, w: Workload, slices: Sequence[str],
                headroom: float = DEFAULT_HEADROOM) -> str:
  """One line per slice: chips, HBM, the recommended mesh and its peak, and the fitting options."""
  from selfreward_jax.train import optim
  tx, _ = optim.make_optimizer(optim.OptimConfig(), total_steps=1)
  lines = [f"{'slice':9s} {'chips':>5s} {'HBM':>5s}  {'recommended (data,fsdp,tensor)':31s} "
           f"{'peak GiB':>8s} {'train':>7s} {'sample':>7s}  other fitting meshes"]
  for name in slices:
    gen, n = SLICES[name]
    hbm = HBM_GIB[gen] * GiB
    best, fitting = recommend(model, w, n, hbm, headroom, tx)
    if best is None:
      hint = ""
      unbatched = [m for m in mesh_options(n) if w.batch_rows % (m[0] * m[1])]
      if any(plan(model, w, m, tx).peak <= (1 - headroom) * hbm for m in unbatched):
        hint = (f"(fits only with data*fsdp > {w.batch_rows}: raise the batch, e.g. "
                f"--batch={2 * w.batch_rows})")
      lines.append(f"{name:9s} {n:5d} {HBM_GIB[gen]:5d}  {'nothing fits':31s} {hint}")
      continue
    others = ", ".join(str(p.mesh) for p in fitting[1:6]) + (" ..." if len(fitting) > 6 else "")
    lines.append(f"{name:9s} {n:5d} {HBM_GIB[gen]:5d}  {str(best.mesh):31s} "
                 f"{best.peak / GiB:8.1f} {best.train_peak / GiB:7.1f} "
                 f"{best.sample_peak / GiB:7.1f}  {others}")
  return "\n".join(lines)


def _parse_mesh(text: str) -> Tuple[int, int, int]:
  parts = [int(x) for x in text.split(",")]
  if len(parts) != 3:
    raise ValueError(f"--mesh={text!r}: expected data,fsdp,tensor (e.g. 1,8,8; -1 = the rest)")
  return tuple(parts)


def main(argv: Sequence[str]) -> int:
  del argv
  from absl import flags
  from selfreward_jax.configlib import ConfigError
  from selfreward_jax.selfreward.config import run_config_from
  from selfreward_jax.sharding import MeshConfig
  f = flags.FLAGS
  cfg_dict = _CONFIG.value
  if cfg_dict is None:
    from selfreward_jax import default_config
    cfg_dict = default_config.get_config()
  try:
    rc = run_config_from(cfg_dict)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  model, w = from_run_config(rc, batch=f.batch, seq=f.seq, slots=f.slots, decode_len=f.decode_len)
  if f.remat:
    model = model.replace(remat=f.remat)
  print(_describe(model, w))
  headroom = f.headroom
  hbm = f.hbm_gib * GiB if f.hbm_gib else None
  if f.slice:
    if f.slice not in SLICES:
      print(f"error: --slice={f.slice}; known: {', '.join(SLICES)}", file=sys.stderr)
      return 2
    gen, n_slice = SLICES[f.slice]
    hbm = hbm or HBM_GIB[gen] * GiB
  if f.mesh or f.devices:
    n = f.devices or (n_slice if f.slice else None)
    mc = MeshConfig(*_parse_mesh(f.mesh)) if f.mesh else rc.mesh
    if n is None:
      sizes = (mc.data, mc.fsdp, mc.tensor)
      if -1 in sizes:
        print("error: give --devices (or --slice) to resolve a -1 mesh axis", file=sys.stderr)
        return 2
      n = math.prod(sizes)
    try:
      shape = mc.resolve(n)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print()
    print(plan(model, w, shape).format(hbm, headroom))
    return 0
  slices = [f.slice] if f.slice else list(SLICES)
  print()
  print(f"recommended meshes (fit within {1 - headroom:.0%} of HBM; least communication: "
        f"smallest tensor, then smallest fsdp):")
  print(slice_table(model, w, slices, headroom))
  if f.slice:
    best, fitting = recommend(model, w, SLICES[f.slice][1], hbm, headroom)
    for p in fitting[:f.show]:
      print()
      print(p.format(hbm, headroom))
  return 0


_CONFIG = None


def _define_flags() -> None:
  global _CONFIG
  from absl import flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); default: "
                                            "the embedded tiny default.", lock_config=True)
  flags.DEFINE_string("mesh", None, "data,fsdp,tensor (one may be -1); default: the config's mesh")
  flags.DEFINE_integer("devices", None, "Number of devices (chips) of the mesh.")
  flags.DEFINE_string("slice", None, f"A TPU slice: {', '.join(SLICES)}.")
  flags.DEFINE_integer("batch", None, "Batch size per update (SFT rows, DPO pairs) for both stages.")
  flags.DEFINE_integer("seq", None, "Training sequence length (default: train.max_len).")
  flags.DEFINE_integer("slots", None, "Sampler slots (default: sampler.max_concurrent).")
  flags.DEFINE_integer("decode_len", None, "KV cache length (default: sampler.max_decode_length).")
  flags.DEFINE_enum("remat", None, list(llama.REMAT_POLICIES), "Override the training remat.")
  flags.DEFINE_float("hbm_gib", None, "Per-device memory in GiB (default: from --slice).")
  flags.DEFINE_float("headroom", DEFAULT_HEADROOM, "Fraction of HBM kept free.")
  flags.DEFINE_integer("show", 3, "With --slice: detailed plans of this many fitting meshes.")


if __name__ == "__main__":
  from absl import app
  jax.config.update("jax_platforms", "cpu")  # nothing is allocated; never wait for an accelerator
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
