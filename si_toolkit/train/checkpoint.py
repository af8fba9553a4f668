"""Checkpoints: HF model folders plus the trainer state needed to resume exactly.

    OUT/checkpoint-<step>/   config.json, model.safetensors, tokenizer files   (save_pretrained)
                             adapter/                  the LoRA adapter (LoRA runs only)
                             trainer_state.pt          step, optimizer, RNG states, config

A checkpoint is written into a temporary folder next to its final place and renamed into it,
so a killed process leaves either no checkpoint-<step> or a complete one (house rule 11).
The folder is a plain transformers model (LoRA runs save the merged weights), loadable by
`AutoModelForCausalLM.from_pretrained`, vLLM and lm-evaluation-harness.

trainer_state.pt holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)`: the python and numpy RNG states are stored as int64 tensors.
The learning-rate schedule is a pure function of the step (trainer.learning_rate_at), so the
step is the whole scheduler state.
"""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from si_toolkit.errors import SIError

__all__ = ["STATE_FILE", "capture_rng", "checkpoint_dirs", "latest_checkpoint", "load_trainer_state",
           "prune_checkpoints", "restore_rng", "save_checkpoint"]

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def capture_rng() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) RNG states, as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # ('MT19937', keys, pos, has_gauss, gauss)
    return {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, step: int, model: Any, tokenizer: Any, state: dict[str, Any]) -> Path:
    """Write OUT/checkpoint-<step> atomically and return its path (call on the main process only).

    `model` is the unwrapped policy (a transformers model, or a PEFT model for LoRA runs);
    `state` is stored as trainer_state.pt and must be weights_only-loadable.
    """
    final = out_dir / f"checkpoint-{step}"
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".checkpoint-{step}."))
    try:
        _save_model(model, staging)
        tokenizer.save_pretrained(staging)
        torch.save(state, staging / STATE_FILE)
        _fsync_tree(staging)
        if final.exists():  # a rerun of the same step: move the old one aside, then drop it
            trash = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".old-checkpoint-{step}."))
            os.replace(final, trash / final.name)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _save_model(model: Any, folder: Path) -> None:
    if hasattr(model, "peft_config"):
        # The adapter alone resumes training; the merged copy is what every other tool loads.
        model.save_pretrained(folder / "adapter")
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder)
    else:
        model.save_pretrained(folder)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def checkpoint_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with trainer_state.pt) in `out_dir`, oldest first."""
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = checkpoint_dirs(out_dir)
    return found[-1][1] if found else None


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep = 0: delete nothing)."""
    if keep <= 0:
        return
    for _, path in checkpoint_dirs(out_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """trainer_state.pt of a checkpoint, loaded with weights_only=True."""
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise SIError(f"{path}: cannot read the trainer state ({str(err).splitlines()[0]}); delete that checkpoint "
                      "folder to resume from the previous one") from None
    if not isinstance(state, dict) or "step" not in state:
        raise SIError(f"{path}: not a trainer state written by si train")
    return state
