"""Build a backend by name: beside the protocol it builds, not inside it (no base <-> hf/vllm cycle)."""

from __future__ import annotations

from typing import Any

from si_toolkit.backends.base import BACKENDS, Backend
from si_toolkit.errors import SIError

__all__ = ["make_backend"]


def make_backend(
    name: str,
    model_ref: str,
    *,
    dtype: str = "bfloat16",
    device: str = "auto",
    trust_remote_code: bool = False,
    engine_options: dict[str, Any] | None = None,
) -> Backend:
    """Build a backend by name. `auto` picks vLLM when it is importable, else transformers."""
    if name not in BACKENDS:
        raise SIError(f"--backend {name!r} is not one of {list(BACKENDS)}")
    if name == "auto":
        import importlib.util

        name = "vllm" if importlib.util.find_spec("vllm") is not None else "hf"
    if name == "vllm":
        from si_toolkit.backends.vllm import VLLMBackend

        return VLLMBackend(model_ref, dtype=dtype, trust_remote_code=trust_remote_code, **(engine_options or {}))
    from si_toolkit.backends.hf import HFBackend

    return HFBackend(model_ref, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
