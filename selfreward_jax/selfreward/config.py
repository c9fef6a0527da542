"""The run's configuration: frozen dataclasses, built from an ml_collections ConfigDict in ``main``.

Defaults follow PAPER.md: N=4 candidates at T=0.7/top-p 0.9, K=3 judgements averaged, new prompts
sampled at T=0.6/top-p 0.9 from 8-shot prompts (6 IFT + 2 generated), pairs max-vs-min with ties
dropped, DPO beta 0.1 with M_t as the reference. The judge's sampling settings are not given in
the paper; we sample judgements like candidates (T=0.7, top-p 0.9), which is what makes K > 1
samples differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

from selfreward_jax.configlib import ConfigError, from_config, to_config
from selfreward_jax.data.oasst import OasstConfig
from selfreward_jax.distributed import DistributedConfig
from selfreward_jax.model.llama import LlamaConfig
from selfreward_jax.selfreward.self_instruct import FilterConfig
from selfreward_jax.sharding import MeshConfig
from selfreward_jax.train.config import DPOConfig, SFTConfig

SEED_SOURCES = ("synthetic", "oasst", "files")


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where M0 comes from.

  hf_checkpoint / meta_checkpoint: a local HF directory or Meta ``consolidated.*.pth`` directory.
  tokenizer: a SentencePiece ``tokenizer.model`` (default: ``<checkpoint>/tokenizer.model``).
  With neither checkpoint, M0 is initialised at random from ``config.model`` (and pretrained on the
  synthetic corpus when the seed source is "synthetic").
  """

  hf_checkpoint: str = ""
  meta_checkpoint: str = ""
  tokenizer: str = ""


@dataclasses.dataclass(frozen=True)
class SeedDataConfig:
  """Seed data (IFT + EFT).

  source: "oasst" (``oasst``), "synthetic" (the verifiable task world) or "files": your own
    ``ift_path`` (JSONL of prompt/response) and ``eft_path`` (JSONL of prompt, responses, ranks).
  eft_examples_path: ready EFT training examples (JSONL of prompt = judge input, response =
    judgement), e.g. the paper's released EFT data; then no SFT baseline is trained to write them
    (the ``sft_baseline`` and ``eft`` stages are skipped).
  eft_eval_fraction: share of EFT prompts held out for reward-modelling evaluation (unfiltered).
  eft_thin_most_common: drop examples of the most common score down to the second most common's
    count (the paper thins score 4).
  """

  source: str = "oasst"
  oasst: OasstConfig = OasstConfig()
  ift_path: str = ""
  eft_path: str = ""
  eft_examples_path: str = ""
  eft_eval_fraction: float = 0.25
  eft_thin_most_common: bool = False

  def __post_init__(self):
    if self.source not in SEED_SOURCES:
      raise ValueError(f"SeedDataConfig.source={self.source!r}; allowed: {SEED_SOURCES}")
    if not 0.0 <= self.eft_eval_fraction < 1.0:
      raise ValueError(f"SeedDataConfig.eft_eval_fraction={self.eft_eval_fraction}; must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  temperature: float = 0.7
  top_p: float = 0.9
  top_k: int = 0
  max_new_tokens: int = 512

  def kwargs(self) -> dict:
    return dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                max_new_tokens=self.max_new_tokens)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """One self-rewarding iteration M_t -> M_{t+1}, repeated ``iterations`` times.

  num_prompts: new prompts to keep per iteration (generation stops there, or after
    ``max_prompt_rounds`` rounds of ``chunk_size`` attempts).
  prompt_model: "self" (M_t writes the prompts; the default) or a fixed model directory (HF or
    ``save_model`` format), like the paper's Llama 2-Chat 70B.
  length_control: Meta-Rewarding's rho (0 = the paper's max-vs-min pairs).
  chunk_size: prompts per resumable unit of the sampling stages.
  """

  iterations: int = 2
  num_prompts: int = 1000
  prompt_model: str = "self"
  prompt_sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=0.9, max_new_tokens=128)
  max_prompt_rounds: int = 100
  num_candidates: int = 4
  candidate_sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=512)
  num_judgements: int = 3
  judge_sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=256)
  judge_template: str = "judge"
  self_instruct_template: str = "self_instruct"
  self_instruct_example_template: str = "self_instruct_example"
  filters: FilterConfig = FilterConfig()
  length_control: float = 0.0
  chunk_size: int = 64
  system_prompt: Optional[str] = None

  def __post_init__(self):
    for name in ("iterations", "num_prompts", "num_candidates", "num_judgements", "chunk_size",
                 "max_prompt_rounds"):
      if getattr(self, name) < (0 if name == "iterations" else 1):
        raise ValueError(f"LoopConfig.{name}={getattr(self, name)} is too small")
    if self.num_candidates < 2:
      raise ValueError(f"LoopConfig.num_candidates={self.num_candidates}: pairs need at least 2")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Decode slots and cache sizes (``max_decode_length`` = prompt + continuation, at most the
  model's ``max_seq_len``; ``max_prefill_length`` a power of two).

  separate_mesh: sample on ``mesh`` instead of the training mesh (the params are resharded
    once per model). Decode steps on an fsdp-sharded model gather the weights every step; a
    sampling mesh with the weights replicated over ``data`` (e.g. one replica per host, tensor
    parallel within it: ``data=<hosts>, fsdp=1, tensor=<chips per host>``) keeps each step's
    traffic inside a replica group, and the decode slots are split over the groups (the hosts).
    Each group must hold a whole copy of the params.
  """

  max_concurrent: int = 32
  max_prefill_length: int = 256
  max_decode_length: int = 512
  separate_mesh: bool = False
  mesh: MeshConfig = MeshConfig(data=-1, fsdp=1, tensor=1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What the ``eval`` stage measures and how it samples.

  models: model names of the run to evaluate (default: each of M0, SFT, M1, ..., M{T+1} that
    exists).
  max_prompts: at most this many instruction-following prompts (0 = all).
  response_temperature: 0 = greedy responses; ``response_max_new_tokens`` (0 = the loop's
    ``candidate_sampling.max_new_tokens``).
  num_judgements, judge_temperature: judgements per response for reward modelling and the
    model-judged head to head (1 greedy by default; the loop's K=3 at T=0.7 is the alternative).
  judge_model: the model judging head to head ("" = the last model of the run).
  prompts_path: prompts for non-synthetic sources (JSONL with "prompt" or "instruction", or a JSON
    list of those or of strings); default: the EFT eval prompts.
  alpaca_eval: export AlpacaEval model outputs (non-synthetic sources).
  chunk_size: prompts per resumable chunk.
  """

  models: Tuple[str, ...] = ()
  max_prompts: int = 0
  response_temperature: float = 0.0
  response_max_new_tokens: int = 0
  num_judgements: int = 1
  judge_temperature: float = 0.0
  judge_model: str = ""
  prompts_path: str = ""
  alpaca_eval: bool = True
  chunk_size: int = 256

  def __post_init__(self):
    if self.num_judgements < 1 or self.chunk_size < 1 or self.max_prompts < 0:
      raise ValueError("EvalConfig: num_judgements and chunk_size must be >= 1, max_prompts >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  seed: int = 0
  model: LlamaConfig = LlamaConfig.tiny()
  init: InitConfig = InitConfig()
  data: SeedDataConfig = SeedDataConfig()
  sft: SFTConfig = SFTConfig()
  dpo: DPOConfig = DPOConfig()
  loop: LoopConfig = LoopConfig()
  sampler: SamplerConfig = SamplerConfig()
  mesh: MeshConfig = MeshConfig()
  eval: EvalConfig = EvalConfig()
  distributed: DistributedConfig = DistributedConfig()
  synthetic: Optional[Mapping[str, Any]] = None  # options of the synthetic world (see synthetic/)


def _model_from(section: Any, key: str) -> LlamaConfig:
  if section is None:
    return LlamaConfig.tiny()
  d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  preset = d.pop("preset", "tiny")
  try:
    base = LlamaConfig.preset(preset)
  except ValueError as e:
    raise ConfigError(f"{key}.preset: {e}") from None
  merged = {**to_config(base), **d}
  return from_config(LlamaConfig, merged, key)


def run_config_from(cfg: Any) -> RunConfig:
  """Validates a ConfigDict/dict and builds the ``RunConfig`` (errors name the key)."""
  d = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  model = _model_from(d.pop("model", None), "config.model")
  synthetic = d.pop("synthetic", None)
  rc = from_config(RunConfig, d, "config")
  rc = dataclasses.replace(rc, model=model, synthetic=synthetic)
  if not (rc.init.hf_checkpoint or rc.init.meta_checkpoint):  # else the checkpoint sets the size
    if rc.sampler.max_decode_length > rc.model.max_seq_len:
      raise ConfigError(f"config.sampler.max_decode_length={rc.sampler.max_decode_length} exceeds "
                        f"config.model.max_seq_len={rc.model.max_seq_len}")
  if rc.sampler.max_prefill_length > rc.sampler.max_decode_length:
    raise ConfigError(f"config.sampler.max_prefill_length={rc.sampler.max_prefill_length} exceeds "
                      f"config.sampler.max_decode_length={rc.sampler.max_decode_length}")
  return rc


def default_config_dict() -> dict:
  """The defaults as plain dicts (a starting point for config files)."""
  d = to_config(RunConfig())
  d["model"] = {"preset": "tiny"}
  d["synthetic"] = None
  return d
