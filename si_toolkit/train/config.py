"""The ENIGMA trainer's configuration: one dataclass, a YAML file, and `--set key=value` overrides.

Every knob is one `TrainConfig` field with its default and a help text (effect, range, unit);
`Literal` choices and cross-field rules are checked when the config is built, so a typo fails
before any model is loaded. Values are resolved in this order, later ones winning:

    field defaults  <  the ablation preset  <  the YAML file (--config)  <  CLI options / --set

An unknown key is an SIError naming the key (and the closest known one). String values from
the command line are converted to the field's type (`1e-5` is a float even though YAML 1.1
reads it as a string; `ot_layers=-1,-8` or `[-1, -8]` is a list of ints).

Presets name the four ablations of the ENIGMA paper's comparison. A preset decides which
auxiliary terms are ON; their weights default to `DEFAULT_LAMBDA_SAMI` / `DEFAULT_LAMBDA_OT`
and may be tuned, but a weight that contradicts the preset (λ > 0 for a term the preset turns
off, or λ = 0 for one it turns on) is an error rather than a silently different ablation.
"""

from __future__ import annotations

import difflib
import math
import typing
import warnings
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from si_toolkit.errors import SIError
from si_toolkit.safeio import read_yaml_mapping
from si_toolkit.tensors import Span
from si_toolkit.train._config_values import check_type, convert
from si_toolkit.train.rewards import RewardConfig

__all__ = [
    "DEFAULT_LAMBDA_OT",
    "DEFAULT_LAMBDA_SAMI",
    "PRESETS",
    "RESUMABLE_CHANGES",
    "TrainConfig",
    "config_help",
    "load_train_config",
    "parse_set_options",
]

# Our choices (the ENIGMA paper does not publish its loss weights): with the mean
# critic the SAMI loss and its gradient are of the order of the dapo policy loss; the Sinkhorn
# divergence is measured in units of the reference cloud's variance (losses.sinkhorn_penalty)
# and starts at 0, so λ_OT = 1 only bites once the hidden states drift.
DEFAULT_LAMBDA_SAMI = 1.0
DEFAULT_LAMBDA_OT = 1.0

Preset = Literal["grpo", "grpo+sami", "grpo+ot", "enigma"]
# preset -> (SAMI on, OT on)
PRESETS: Mapping[str, tuple[bool, bool]] = MappingProxyType(
    {"grpo": (False, False), "grpo+sami": (True, False), "grpo+ot": (False, True), "enigma": (True, True)}
)

# Keys that may differ when a run is resumed: they change bookkeeping, not the trajectory.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "save_every", "save_total_limit", "log_every", "tensorboard", "eval_every", "save_final_optimizer"}
)


def _f(default: Any, help: str) -> Any:  # noqa: A002 - `help` is the metadata key typer and TRL use
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of `si train` (GRPO + λ_SAMI·SAMI + λ_OT·Sinkhorn). See docs/training.md.

    Fields are grouped: model, data, generation, GRPO, optimisation, auxiliary terms, reward,
    run. A "step" generates one batch (prompts_per_step prompts × num_generations completions)
    and makes num_iterations optimizer updates on it.
    """

    # ---------------------------------------------------------------- model
    model: str = _f("embedded", "Policy to train: 'embedded', a model folder, or an HF id in the local cache.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Weights dtype. float32 (default, unlike inference commands): bfloat16 weights keep no fp32 master copy, so updates below ~1/256 of a weight (lr 1e-6) are rounded away."
    )
    bf16: bool | None = _f(
        None, "Mixed precision, TRL's bf16: every forward pass (rollouts, loss, reference, pi_old) runs under bfloat16 autocast while weights, gradients and AdamW state stay in dtype. None = on with CUDA, off on CPU. Steps were 1.5-2x faster on a CPU with AVX-512 BF16 (time it on others); token log-probs move by ~0.03 nats from float32, so off reproduces float32 runs exactly."
    )
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = CUDA when available (cuda:LOCAL_RANK under torchrun).")
    trust_remote_code: bool = _f(False, "Allow model code shipped in the model folder.")
    lora_r: int = _f(0, "LoRA rank; 0 trains all weights. > 0 needs the optional package peft.")
    lora_alpha: int = _f(32, "LoRA scaling alpha (> 0); the update is scaled by alpha / r.")
    lora_dropout: float = _f(
        0.0, "Dropout on the LoRA branch, in [0, 1): active in the loss forward that takes gradients, off for generation and for every no-grad pass."
    )
    lora_targets: list[str] = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters (Llama-style names)."
    )

    # ---------------------------------------------------------------- data
    prompts: str = _f("builtin:mixed", "Training prompts: builtin:mixed|arithmetic|open or a JSONL/CSV/Parquet file.")
    n_prompts: int | None = _f(None, "Use the first n prompts of the set (None = all).")
    prompts_per_step: int = _f(2, "Prompts per step, over all processes; a multiple of grad_accum x world size.")
    prefill: bool = _f(True, "Prefill the assistant turn with '<think>\\n' (SI-SPEC §1).")

    # ---------------------------------------------------------------- generation
    num_generations: int = _f(4, "G: completions per prompt (>= 2). With lambda_sami > 0, a multiple of K.")
    max_completion_length: int = _f(64, "Maximum generated tokens per completion.")
    temperature: float = _f(1.0, "Sampling temperature (> 0); log-probs are computed at the same temperature.")
    top_p: float = _f(1.0, "Nucleus truncation in (0, 1]; 1 = off (top_k is always off, as in SI-SPEC §1).")
    rollout_backend: Literal["hf", "vllm"] = _f(
        "hf", "Who samples the rollouts: hf = the policy itself through the toolkit's decode loop; vllm = a vLLM engine in the training process (TRL's colocate mode) that receives the policy's weights after every optimizer step; under torchrun one engine per process, on that process's device."
    )
    vllm_gpu_memory_utilization: float = _f(
        0.3, "rollout_backend=vllm: share of GPU memory the engine may take (weights + KV cache), in (0, 1]; the rest is training's. TRL's default."
    )
    vllm_importance_sampling_correction: bool = _f(
        True, "rollout_backend=vllm: weight the GRPO loss by the truncated importance ratio pi_train / pi_vllm of the sampled tokens, correcting the engine's slightly different sampling distribution (TRL's default)."
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = _f(
        "sequence_mask", "How the ratio is capped: per token or per sequence (product over its tokens); truncate = min(ratio, cap), mask = weight 0 above the cap. TRL's names and default."
    )
    vllm_importance_sampling_cap: float = _f(3.0, "The cap of the importance ratio (> 0); TRL's default 3.0.")

    # ---------------------------------------------------------------- GRPO
    epsilon: float = _f(0.2, "Lower clip of the importance ratio (ratio >= 1 - epsilon), in [0, 1).")
    epsilon_high: float | None = _f(None, "Upper clip (ratio <= 1 + epsilon_high); None = epsilon. DAPO uses 0.28.")
    beta: float = _f(0.0, "Weight of the k3 KL penalty to the reference (>= 0); 0 = off, the TRL default.")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = _f(
        "dapo", "Aggregation: grpo = mean per sequence then batch; dr_grpo = / (N x max length); dapo = / active tokens."
    )
    importance_level: Literal["token", "sequence"] = _f(
        "token", "Importance weights per token, or per sequence (GSPO: exp of the mean log-ratio)."
    )
    scale_rewards: Literal["group", "batch", "none"] = _f(
        "group", "Divide the group-centred rewards by the group's std, the whole step's std (batch, PPO-Lite), or not at all (none, Dr. GRPO). TRL's true/false = group/none."
    )
    mask_truncated_completions: bool = _f(
        False, "Leave completions cut at max_completion_length (no EOS) out of the GRPO loss, as TRL / DAPO; they keep their place in the reward statistics."
    )
    num_iterations: int = _f(1, "mu: optimizer updates per generated batch (>= 1); > 1 makes updates off-policy.")

    # ---------------------------------------------------------------- optimisation
    learning_rate: float = _f(
        1e-5, "Peak AdamW learning rate. TRL uses 1e-6 for long GPU runs; 1e-5 lets short CPU runs move."
    )
    lr_schedule: Literal["cosine", "constant"] = _f("cosine", "After warm-up: cosine decay to 0 at max_steps, or constant.")
    warmup_steps: int = _f(0, "Steps of linear warm-up from 0 to learning_rate (<= max_steps).")
    weight_decay: float = _f(0.0, "AdamW decoupled weight decay (>= 0).")
    adam_beta1: float = _f(0.9, "AdamW beta1, in [0, 1).")
    adam_beta2: float = _f(0.999, "AdamW beta2, in [0, 1).")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon (> 0).")
    grad_accum: int = _f(1, "Micro-batches per update on each process (whole prompts per micro-batch).")
    parallelism: Literal["ddp", "fsdp"] = _f(
        "ddp", "Under torchrun: ddp = every process holds the whole model and gradients are averaged; fsdp = FSDP2 (fully_shard per decoder layer + root) shards weights, gradients and AdamW state over the processes. No effect in one process."
    )
    max_grad_norm: float = _f(1.0, "Clip the global gradient norm to this; 0 disables clipping.")
    gradient_checkpointing: bool = _f(
        True, "Recompute each decoder layer's activations during backward instead of keeping them (as TRL does by default): activation memory of about one layer instead of all, for one more forward of the completion tokens. false keeps them: faster where memory bandwidth is ample (GPUs) and the activations fit."
    )
    max_steps: int = _f(100, "Steps to train (each: one generated batch, num_iterations updates).")

    # ---------------------------------------------------------------- auxiliary terms
    preset: Preset = _f("enigma", "Ablation: grpo | grpo+sami | grpo+ot | enigma. Decides which terms are on.")
    lambda_sami: float | None = _f(None, f"Weight of the SAMI loss; None = the preset's ({DEFAULT_LAMBDA_SAMI} or 0).")
    sami_critic: Literal["mean", "sum"] = _f("mean", "SAMI critic: mean token log-prob (SAMI) or summed (exact).")
    sami_span: Span = _f("cot", "Completion span scored by the SAMI matrix.")
    lambda_ot: float | None = _f(None, f"Weight of the Sinkhorn term; None = the preset's ({DEFAULT_LAMBDA_OT} or 0).")
    ot_epsilon: float = _f(0.1, "Entropic regularisation of the Sinkhorn divergence, in reference-variance units.")
    ot_layers: list[int] = _f([-1], "Hidden-state layers for OT (0 = embeddings, -1 = last); the terms are averaged.")
    ot_pooling: Literal["mean", "token"] = _f("mean", "OT points: one mean-pooled vector per completion, or every token.")
    ot_span: Span = _f("cot", "Completion span whose hidden states enter the OT term.")
    ot_max_points: int = _f(512, "token pooling: at most this many points per cloud (evenly spaced subsample).")
    monitor_off_terms: bool = _f(
        True, "Also compute the SAMI bound, the Sinkhorn value and the KL to the reference when their weight is 0 (extra no-grad forwards)."
    )

    # ---------------------------------------------------------------- reward
    reward: Literal["graded", "strict"] = _f("graded", "Format reward: graded (partial credit) or strict (0/1).")
    reward_length_weight: float = _f(0.0, "Weight of the soft over-length penalty (>= 0); 0 = off.")
    reward_length_max_chars: int = _f(4000, "Completion length (characters) where the length term reaches -1.")
    reward_length_soft_chars: int = _f(1000, "Width (characters) of the length term's ramp.")
    reward_correctness_weight: float = _f(0.0, "Weight of numeric answer correctness (>= 0); needs reference answers.")
    reward_gate_correctness: bool = _f(False, "Count correctness only for completions in the exact format.")

    # ---------------------------------------------------------------- run
    seed: int = _f(0, "Seed of prompt order, variant assignment and sampling (>= 0).")
    save_every: int = _f(50, "Save a checkpoint every N steps (0 = only at the end).")
    save_total_limit: int = _f(0, "Keep only the newest N checkpoints (0 = keep all).")
    log_every: int = _f(1, "Print a metrics line every N steps (metrics.jsonl gets every step).")
    eval_every: int = _f(0, "Evaluate on eval_prompts every N steps (0 = never).")
    eval_prompts: str | None = _f(None, "Prompt set for evaluation (same forms as prompts); needed by eval_every.")
    n_eval_prompts: int | None = _f(None, "Use the first n eval prompts (None = all).")
    save_final_optimizer: bool = _f(
        True, "Keep the optimizer state (AdamW: 2 x the trainable weights in fp32) in the final checkpoint. false: the final checkpoint is model-only and the run cannot be continued from it; save_every checkpoints always keep it."
    )
    tensorboard: bool = _f(True, "Also write TensorBoard events (needs the tensorboard package; a warning says when it is missing).")
    entropy_warn: float = _f(0.1, "Warn when the mean token entropy (nats) falls below this (collapse).")
    zero_std_warn: float = _f(0.9, "Warn when the fraction of zero-reward-std groups exceeds this.")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_type(f.name, getattr(self, f.name), _HINTS[f.name])
        sami_on, ot_on = PRESETS[self.preset]
        # Frozen dataclass: the preset's weights are filled in once, here, and then never change.
        sami = _resolve_lambda("lambda_sami", self.lambda_sami, sami_on, self.preset, DEFAULT_LAMBDA_SAMI)
        object.__setattr__(self, "lambda_sami", sami)
        ot = _resolve_lambda("lambda_ot", self.lambda_ot, ot_on, self.preset, DEFAULT_LAMBDA_OT)
        object.__setattr__(self, "lambda_ot", ot)
        _check_ranges(self)
        self.reward_config()  # RewardConfig validates its own fields
        if self.importance_level == "sequence" and self.loss_type in ("dapo", "dr_grpo"):
            warnings.warn(
                f"importance_level='sequence' with loss_type={self.loss_type!r}: the loss sums per-token terms, so "
                "each sequence is weighted by its length instead of optimising the per-sequence (GSPO) objective; "
                "set loss_type='grpo' to reproduce the GSPO paper",
                UserWarning,
                stacklevel=3,
            )

    def reward_config(self) -> RewardConfig:
        """The reward terms this config enables (rewards.RewardConfig)."""
        return RewardConfig(
            format_reward=self.reward, prefill=self.prefill,
            length_weight=self.reward_length_weight, length_max_chars=self.reward_length_max_chars,
            length_soft_chars=self.reward_length_soft_chars, correctness_weight=self.reward_correctness_weight,
            gate_correctness_on_format=self.reward_gate_correctness,
        )

    @property
    def sami_weight(self) -> float:
        """λ_SAMI as a float (resolved from the preset in __post_init__)."""
        return float(self.lambda_sami or 0.0)

    @property
    def ot_weight(self) -> float:
        """λ_OT as a float (resolved from the preset in __post_init__)."""
        return float(self.lambda_ot or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field (what the run folder records)."""
        return asdict(self)


_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)


def _resolve_lambda(name: str, value: float | None, on: bool, preset: str, default: float) -> float:
    if value is None:
        return default if on else 0.0
    if not (math.isfinite(value) and value >= 0.0):
        raise SIError(f"{name}={value}: must be a finite number >= 0")
    if on and value == 0.0:
        raise SIError(f"{name}=0 contradicts preset={preset!r}, which turns this term on; "
                      "pick another preset or a weight > 0")
    if not on and value > 0.0:
        raise SIError(f"{name}={value} contradicts preset={preset!r}, which turns this term off; "
                      "set preset to one that uses it")
    return float(value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SIError(message)


def _check_ranges(c: TrainConfig) -> None:
    """Cross-field rules and numeric ranges; each message gives the rule, the value and the fix."""
    _require(c.num_generations >= 2, f"num_generations={c.num_generations}: a GRPO group needs at least 2 completions")
    positive_ints = ("prompts_per_step", "max_completion_length", "num_iterations", "grad_accum", "max_steps",
                     "log_every", "ot_max_points")
    for name in positive_ints:
        _require(getattr(c, name) >= 1, f"{name}={getattr(c, name)}: must be >= 1")
    for name in ("warmup_steps", "save_every", "save_total_limit", "eval_every", "lora_r", "seed"):
        _require(getattr(c, name) >= 0, f"{name}={getattr(c, name)}: must be >= 0")
    for name in ("n_prompts", "n_eval_prompts"):
        value = getattr(c, name)
        _require(value is None or value >= 1, f"{name}={value}: must be >= 1 (or None for all prompts)")
    _require(c.prompts_per_step % c.grad_accum == 0,
             f"prompts_per_step={c.prompts_per_step} is not a multiple of grad_accum={c.grad_accum}: each "
             "micro-batch holds whole prompts; change one of them")
    _require(c.warmup_steps <= c.max_steps, f"warmup_steps={c.warmup_steps} exceeds max_steps={c.max_steps}")
    _check_floats(c)
    _require(len(c.ot_layers) >= 1, "ot_layers is empty; give at least one layer index, e.g. [-1]")
    _require(len(set(c.ot_layers)) == len(c.ot_layers), f"ot_layers={c.ot_layers} repeats a layer")
    _require(len(c.lora_targets) >= 1 or c.lora_r == 0, "lora_targets is empty; name the modules that get adapters")
    _require(c.eval_every == 0 or c.eval_prompts is not None,
             f"eval_every={c.eval_every} needs eval_prompts (a prompt set); set eval_prompts or eval_every=0")
    _require(c.prompts.strip() != "", "prompts is empty; use builtin:mixed or a prompt file")
    _require(c.parallelism == "ddp" or c.lora_r == 0,
             f"parallelism=fsdp with lora_r={c.lora_r}: sharding is for full fine-tuning; LoRA's trainable state is "
             "small, so use parallelism=ddp (or lora_r=0)")


def _check_floats(c: TrainConfig) -> None:
    def finite(name: str) -> float:
        value = float(getattr(c, name))
        _require(math.isfinite(value), f"{name}={value}: must be a finite number")
        return value

    _require(0.0 < finite("temperature") <= 10.0, f"temperature={c.temperature}: must be in (0, 10]")
    _require(0.0 < finite("top_p") <= 1.0, f"top_p={c.top_p}: must be in (0, 1]")
    _require(0.0 <= finite("epsilon") < 1.0, f"epsilon={c.epsilon}: must be in [0, 1)")
    _require(c.epsilon_high is None or (math.isfinite(c.epsilon_high) and c.epsilon_high >= 0.0),
             f"epsilon_high={c.epsilon_high}: must be >= 0 (or None to use epsilon)")
    for name in ("beta", "weight_decay", "max_grad_norm", "entropy_warn"):
        _require(finite(name) >= 0.0, f"{name}={getattr(c, name)}: must be >= 0")
    for name in ("learning_rate", "adam_epsilon", "ot_epsilon", "lora_alpha"):
        _require(finite(name) > 0.0, f"{name}={getattr(c, name)}: must be > 0")
    for name in ("adam_beta1", "adam_beta2", "lora_dropout"):
        _require(0.0 <= finite(name) < 1.0, f"{name}={getattr(c, name)}: must be in [0, 1)")
    _require(0.0 <= finite("zero_std_warn") <= 1.0, f"zero_std_warn={c.zero_std_warn}: must be in [0, 1]")
    _require(0.0 < finite("vllm_gpu_memory_utilization") <= 1.0,
             f"vllm_gpu_memory_utilization={c.vllm_gpu_memory_utilization}: must be in (0, 1]")
    _require(finite("vllm_importance_sampling_cap") > 0.0,
             f"vllm_importance_sampling_cap={c.vllm_importance_sampling_cap}: must be > 0 (TRL uses 3.0)")


def _unknown_key_error(key: str, where: str) -> SIError:
    close = difflib.get_close_matches(key, list(_HINTS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; run `si train --help-config` for the list"
    return SIError(f"{where}: unknown training option {key!r}{hint}")


def parse_set_options(items: list[str]) -> dict[str, str]:
    """`["key=value", ...]` from repeated `--set` options into a dict (later keys win)."""
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SIError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=1e-5")
        parsed[key.strip()] = value
    return parsed


def load_train_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Build a TrainConfig from an optional YAML file and overrides (CLI options and --set).

    Args:
        path: a YAML mapping of field names to values (`si train --config`), or None.
        overrides: field name -> value; strings are converted to the field's type.

    Raises:
        SIError: unknown key (named, with the closest known key), a value of the wrong type,
            a choice not in its Literal, or a broken cross-field rule.
    """
    values: dict[str, Any] = {}
    sources = [(str(path), read_yaml_mapping(path, "training config"))] if path is not None else []
    sources.append(("command line", dict(overrides or {})))
    for where, mapping in sources:
        for key, raw in mapping.items():
            if key not in _HINTS:
                raise _unknown_key_error(str(key), where)
            values[key] = convert(key, raw, _HINTS[key])
    return TrainConfig(**values)


def config_help() -> list[tuple[str, str, str]]:
    """(name, default, help) for every field, in declaration order (for --help-config and docs)."""
    rows = []
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        rows.append((f.name, repr(default), str(f.metadata.get("help", ""))))
    return rows
