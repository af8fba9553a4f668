"""Everything a training run holds, built once: run folder, models, optimizer, prompts, resume.

`open_session` is the only place that loads weights. The policy is the model of an
`HFBackend` (so generation goes through the same Backend code and rendering as the sampling
stage), wrapped in DDP under torchrun, optionally with LoRA adapters (peft, imported lazily).
The reference is a frozen copy of the initial weights (or, with LoRA, the policy with its
adapters disabled); it is loaded only when the KL penalty or the Sinkhorn term (trained or
monitored) needs it.

The run folder records the resolved config and the principle set in train_config.json. A
folder that already holds a run is reused only with `resume=True`, and only if nothing but
the keys in `RESUMABLE_CHANGES` differs; otherwise the error names the differing keys.
"""

from __future__ import annotations

import copy
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from si_toolkit.backends.base import SamplingConfig
from si_toolkit.backends.hf import HFBackend
from si_toolkit.train.colocate import open_rollout_engine, push_weights
from si_toolkit.errors import SIError
from si_toolkit.models import ResolvedModel, load_causal_lm, resolve_model
from si_toolkit.principles import PrincipleSet
from si_toolkit.prompts import PromptSet, load_prompts
from si_toolkit.safeio import atomic_write_json
from si_toolkit.train.checkpoint import latest_checkpoint, load_trainer_state, restore_rng
from si_toolkit.train.config import RESUMABLE_CHANGES, TrainConfig
from si_toolkit.train.distributed import DistContext, barrier
from si_toolkit.train.forward import PairModel
from si_toolkit.train.memory import store_for_autocast
from si_toolkit.train.metrics import MetricsLog
from si_toolkit.train.sharding import load_optimizer_state, shard_policy
from si_toolkit.train.terms import reference_logp_needed, reference_states_needed

__all__ = ["RUN_FILE", "Session", "open_session", "run_record", "uses_bf16"]

RUN_FILE = "train_config.json"


@dataclass
class Session:
    """The state of one training run on one process."""

    config: TrainConfig
    ctx: DistContext
    out_dir: Path
    principle_set: PrincipleSet
    backend: HFBackend
    rollout: Any  # the Backend that samples the rollouts: `backend` itself, or a colocated vLLM engine
    policy: Any  # unwrapped policy (transformers or PEFT model), FSDP-sharded under parallelism=fsdp
    model: Any  # what the loss forward calls: DDP(PairModel(policy)) under torchrun with ddp, else the policy
    reference: Any | None  # frozen initial weights; None when unused or with LoRA
    optimizer: torch.optim.Optimizer
    prompts: PromptSet
    eval_prompts: PromptSet | None
    sampling: SamplingConfig
    metrics: MetricsLog
    start_step: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def k(self) -> int:
        return self.principle_set.K

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def pad_id(self) -> int:
        """Padding id of the forward passes (the tokenizer's pad, else EOS); padding is never attended."""
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        return int(pad or 0)

    @property
    def lora(self) -> bool:
        return self.config.lora_r > 0

    @property
    def fsdp(self) -> bool:
        """The policy is sharded (parallelism=fsdp under torchrun); backend.model is its whole copy."""
        return self.config.parallelism == "fsdp" and self.ctx.enabled

    @property
    def bf16(self) -> bool:
        """Whether the forward passes run under bf16 autocast (config.bf16, resolved)."""
        return uses_bf16(self.config, self.backend.device)

    def autocast(self) -> torch.autocast:
        """The context of a forward pass: bf16 autocast on the policy's device when `bf16`, else
        a no-op. Backward runs outside it (autograd replays each op in its forward's dtype)."""
        return torch.autocast(torch.device(self.backend.device).type, dtype=torch.bfloat16, enabled=self.bf16)

    @property
    def current(self) -> Any:
        """The current weights, whole: the policy, or under FSDP its synced generation copy. No-grad
        passes and checkpoints use it."""
        return self.backend.model


def uses_bf16(config: TrainConfig, device: str) -> bool:
    """config.bf16, or when unset (None): on with CUDA, off on CPU (TRL's default is on)."""
    return config.bf16 if config.bf16 is not None else torch.device(device).type == "cuda"


def run_record(config: TrainConfig, principle_set: PrincipleSet, ctx: DistContext) -> dict[str, Any]:
    """What train_config.json holds: the resolved config, the principle set and the environment."""
    import transformers

    return {
        "config": config.to_dict(),
        "principles": {"name": principle_set.name, "path": principle_set.path, "K": principle_set.K,
                       "variant_labels": [v.label for v in principle_set.variants],
                       "variant_texts": [v.text for v in principle_set.variants]},
        "environment": {"world_size": ctx.world_size, "bf16": uses_bf16(config, _device(config, ctx)), "torch": torch.__version__,
                        "transformers": transformers.__version__, "python": platform.python_version()},
    }


def _check_resumable(record: dict[str, Any], saved: dict[str, Any], path: Path) -> None:
    old, new = saved.get("config", {}), record["config"]
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if differing:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing)
        raise SIError(f"{path}: cannot resume with a different config ({details}); use the original settings, "
                      "or start a new run (--out) from a checkpoint folder with --model")
    if saved.get("principles", {}).get("variant_texts") != record["principles"]["variant_texts"]:
        raise SIError(f"{path}: the run was trained on other principle texts; pass the original principle file")


def _prepare_out_dir(config: TrainConfig, principle_set: PrincipleSet, out_dir: Path, resume: bool,
                     ctx: DistContext) -> Path | None:
    """Create or check the run folder; return the checkpoint to resume from (or None)."""
    record = run_record(config, principle_set, ctx)
    path = out_dir / RUN_FILE
    checkpoint = latest_checkpoint(out_dir)
    if path.is_file() or checkpoint is not None:
        if not resume:
            raise SIError(f"{out_dir} already holds a training run; pass --resume to continue it or choose another --out")
        try:
            saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, json.JSONDecodeError) as err:
            raise SIError(f"{path}: unreadable ({err}); restore it or start a new run") from None
        _check_resumable(record, saved, path)
    barrier(ctx)  # every rank has checked the folder before the main one writes into it
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    barrier(ctx)
    return checkpoint


def _device(config: TrainConfig, ctx: DistContext) -> str:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise SIError("device='cuda' but no CUDA GPU is visible; use device=auto or cpu")
    if config.device == "cpu" or not cuda:
        return "cpu"
    return f"cuda:{ctx.local_rank}" if ctx.enabled else "cuda"


def _apply_lora(model: Any, config: TrainConfig, checkpoint: Path | None) -> Any:
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise SIError(f"lora_r={config.lora_r} needs the optional package peft: pip install 'si-toolkit[lora]' "
                      "(or set lora_r=0 to train all weights)") from None
    if checkpoint is not None:
        return PeftModel.from_pretrained(model, str(checkpoint / "adapter"), is_trainable=True)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
    try:
        # The adapters' A matrices start random (B = 0): draw them from the run's seed, not from
        # whatever state torch's global generator is in, so two runs with one seed agree.
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            return get_peft_model(model, lora)
    except ValueError as err:
        raise SIError(f"lora_targets={config.lora_targets}: {str(err).splitlines()[0]}; "
                      "name modules of this model") from None


def _own_memory(model: Any) -> None:
    """Copy every parameter into memory of its own (64-byte aligned, like every torch allocation).

    transformers maps float weights straight from the safetensors file, at offsets set by the
    file's header (24 or 40 bytes past a 64-byte boundary here). MKL's matmuls take slower
    paths on such memory and their last bits depend on the alignment, so a run resumed from a
    checkpoint (another file, another layout) would not repeat the uninterrupted run bit for
    bit; and the optimizer's first write would copy each mapped page anyway. Tied weights stay
    tied: `parameters()` yields a shared parameter once.
    """
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def _load_models(config: TrainConfig, ctx: DistContext, checkpoint: Path | None,
                 needs_reference: bool) -> tuple[HFBackend, Any, Any | None]:
    """(backend whose .model is the policy, policy, reference or None)."""
    device = _device(config, ctx)
    resolved = resolve_model(config.model, trust_remote_code=config.trust_remote_code)
    source = resolved
    if checkpoint is not None and config.lora_r == 0:
        source = ResolvedModel(ref=str(checkpoint), name=resolved.name, path=str(checkpoint))
    backend = HFBackend(source, dtype=config.dtype, device=device, trust_remote_code=config.trust_remote_code)
    reference = None
    if needs_reference and config.lora_r == 0:
        if checkpoint is None:
            reference = copy.deepcopy(backend.model)
        else:  # the reference is the initial model, not the checkpoint
            reference = load_causal_lm(resolved, dtype=config.dtype, device=device,
                                       trust_remote_code=config.trust_remote_code)
        reference.requires_grad_(False)
    policy = backend.model
    if config.lora_r > 0:
        policy = _apply_lora(policy, config, checkpoint)
        backend.model = policy  # generation samples from the adapted policy
    for model in (policy, reference):
        if model is not None:
            _own_memory(model)
    if reference is not None and uses_bf16(config, device):
        store_for_autocast(reference, torch.bfloat16)  # it only runs under the bf16 autocast
    # Eval mode, as TRL's disable_dropout: generation and the no-grad passes score the
    # distribution that generated the samples. Only LoRA dropout (lora_dropout > 0) switches on,
    # inside the loss forward that takes gradients (forward.lora_dropout).
    policy.eval()
    return backend, policy, reference


def _resume_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer state to resume from; a model-only checkpoint is an error naming the ways on."""
    state = load_trainer_state(checkpoint)
    if "optimizer" not in state:
        raise SIError(
            f"{checkpoint} was saved without its optimizer state (save_final_optimizer=false), so the run cannot "
            f"continue from it: start a new run from these weights with --model {checkpoint}, or move that folder "
            "away to resume from the checkpoint before it"
        )
    return state


def open_session(config: TrainConfig, principle_set: PrincipleSet, out_dir: Path, *, resume: bool,
                 ctx: DistContext) -> Session:
    """Build (or restore) the run: folder, models, optimizer, prompts, metrics log."""
    if config.prompts_per_step % (ctx.world_size * config.grad_accum) != 0:
        raise SIError(f"prompts_per_step={config.prompts_per_step} must be a multiple of world size ({ctx.world_size}) "
                      f"x grad_accum ({config.grad_accum}): every process takes whole prompts")
    k = principle_set.K
    if config.sami_weight > 0.0 and config.num_generations % k != 0:
        raise SIError(f"num_generations={config.num_generations} must be a multiple of K={k} (variants of "
                      f"{principle_set.path}) when lambda_sami > 0: each prompt needs complete K x K SAMI matrices")
    prompts = load_prompts(config.prompts, n=config.n_prompts)
    eval_prompts = load_prompts(config.eval_prompts, n=config.n_eval_prompts) if config.eval_prompts else None
    checkpoint = _prepare_out_dir(config, principle_set, out_dir, resume, ctx)
    state = _resume_state(checkpoint) if checkpoint is not None else None  # before loading any weights
    needs_reference = reference_logp_needed(config) or reference_states_needed(config)
    backend, policy, reference = _load_models(config, ctx, checkpoint, needs_reference)
    model = policy
    fsdp = config.parallelism == "fsdp" and ctx.enabled
    if fsdp:
        backend.model = copy.deepcopy(policy)  # the whole copy that samples (sharding.py)
        shard_policy(policy, ctx, backend.device, bf16=uses_bf16(config, backend.device))
    elif ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # Around PairModel: forward_pairs runs its prompt and completion passes as one DDP forward.
        model = DistributedDataParallel(PairModel(policy), device_ids=[ctx.local_rank] if backend.device != "cpu" else None)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    # The fused kernel (CPU and CUDA; not for FSDP's DTensors) updates each parameter in one pass;
    # the default multi-tensor one allocates temporaries the size of all the weights at every step.
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, weight_decay=config.weight_decay, fused=not fsdp)
    start_step = 0
    metrics = MetricsLog(out_dir, enabled=ctx.is_main, tensorboard=config.tensorboard)
    if state is not None:
        load_optimizer_state(policy, optimizer, state["optimizer"], fsdp)
        restore_rng(state["rng"])
        start_step = int(state["step"])
    metrics.truncate_after(start_step)
    sampling = SamplingConfig(max_new_tokens=config.max_completion_length, temperature=config.temperature,
                              top_p=config.top_p, top_k=0, replicates=1, seed=config.seed)
    rollout = backend
    if config.rollout_backend == "vllm":
        rollout = open_rollout_engine(config, backend, ctx)
        if config.lora_r > 0:  # the engine read the base files; the adapters (fresh or resumed) are not in them
            push_weights(rollout, backend.model)
    return Session(config=config, ctx=ctx, out_dir=out_dir, principle_set=principle_set, backend=backend,
                   rollout=rollout, policy=policy, model=model, reference=reference, optimizer=optimizer, prompts=prompts,
                   eval_prompts=eval_prompts, sampling=sampling, metrics=metrics, start_step=start_step)
