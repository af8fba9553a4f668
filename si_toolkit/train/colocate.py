"""vLLM rollouts colocated with training (TRL's `vllm_mode="colocate"`).

With `rollout_backend: vllm` the training process holds a vLLM engine next to the policy: the
engine samples every step's completions, and after every optimizer step the policy's weights
are copied into it (`push_weights`), so each step samples from the weights being trained.

- Weights go in by transformers parameter name through vLLM's in-place `reload_weights`,
  in the same process (no copy through pipes); the prefix cache is dropped after each push.
- LoRA: the adapters are merged into the base weights for the copy and unmerged after, so
  the engine samples the adapted policy while the trainer keeps training the adapters.
- Sampling keeps the trainer's seed rule (one seed per completion from (seed, step, prompt
  position), `rollout.py`): a resumed run asks the engine for the same seeded requests.
  vLLM reproduces a seeded request only up to its batch-dependent numerics, so a resumed
  run repeats the uninterrupted one's samples where the logits agree bit for bit, not always.
- The engine reports the log-prob of each sampled token under the distribution it sampled
  (`processed_logprobs`: after temperature and top-p); the loss compares them with the
  trainer's and corrects with truncated importance weights (`losses.rollout_correction_weights`).
- Under torchrun every rank starts its own engine on its own device (vLLM's
  `external_launcher` executor, which joins the job's process group), samples its own share
  of the step's prompts with it, and receives its own copy of the new weights (the whole
  weights: under FSDP the rank's synced generation copy). Ranks never exchange rollouts, so
  the engines need no tensor parallelism; tensor_parallel_size must stay 1.
"""

from __future__ import annotations

from typing import Any

from si_toolkit.errors import SIError
from si_toolkit.train.config import TrainConfig
from si_toolkit.train.distributed import DistContext

__all__ = ["open_rollout_engine", "policy_weights", "push_weights"]


def open_rollout_engine(config: TrainConfig, backend: Any, ctx: DistContext) -> Any:
    """The vLLM engine that samples the rollouts, started on the files the HF backend loaded (the
    base model, or the checkpoint a full fine-tuning run resumes from), so it starts in sync."""
    from si_toolkit.backends.vllm import VLLMBackend, engine_options_from_env

    if ctx.enabled and engine_options_from_env().get("tensor_parallel_size", 1) != 1:
        raise SIError("rollout_backend=vllm under torchrun starts one engine per process, each on its own device; "
                      "remove tensor_parallel_size from $SI_VLLM_ENGINE_OPTIONS (or set it to 1)")
    return VLLMBackend(backend.resolved, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
                       gpu_memory_utilization=config.vllm_gpu_memory_utilization, seed=config.seed,
                       logprobs_mode="processed_logprobs", in_process=True, torchrun=ctx.enabled)


def policy_weights(model: Any) -> list[tuple[str, Any]]:
    """(transformers name, tensor) of every weight of the policy as one plain model.

    A PEFT model must be merged first (`push_weights` does it): its names carry the adapter
    wrappers, which are dropped here (`...q_proj.base_layer.weight` -> `...q_proj.weight`).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        out.append((name.replace(".base_layer", ""), tensor.detach()))
    return out


def push_weights(engine: Any, model: Any) -> None:
    """Copy the policy's current weights into the engine (LoRA merged for the copy)."""
    merged = hasattr(model, "merge_adapter")
    if merged:
        model.merge_adapter()
    try:
        engine.load_weights(policy_weights(model))
    finally:
        if merged:
            model.unmerge_adapter()
