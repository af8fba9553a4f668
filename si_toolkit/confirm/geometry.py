"""Geometry of a trained model: where training moved the hidden states, layer by layer.

Inputs are the rendered (variant, prompt) prompts of a principle set on held-out prompts
(`si_toolkit.confirm.evaluate.heldout_split`), fed to the BASE and the TRAINED model. For each layer l
(0 = the embeddings, L = the last block, after the final norm as transformers reports it) each
input gives one vector: the mean hidden state over its **prompt tokens**:

- ``pool="suffix"`` (default): the tokens after the principle text, i.e. the longest token
  suffix shared by the K renderings of one prompt (CoT instruction, user prompt, assistant
  opener). Identical tokens under every variant, so a difference between variants is how the
  model *represents* the principle in context, not the principle's own words.
- ``pool="all"``: every token of the rendered prompt.

Pooling prompt tokens needs one forward pass per input and no sampling, so it is cheap and
deterministic; pooling a generated CoT would add a decoding choice and its noise.

With B_l, T_l the (N, D) clouds of base and trained states (N = n prompts × K variants), per layer:

- **Sinkhorn**: S_ε(T_l, B_l), the debiased Sinkhorn divergence of `train.losses.sinkhorn_penalty`
  (standardised by the base cloud, ε = 0.1): how far the whole cloud moved.
- **Principle direction** d_k, in the BASE model, averaged over prompts x: antithesis sets
  d_k = mean_x (h(all-positive, x) − h(k flipped, x)); alternatives sets
  d_j = mean_x (h(j, x) − mean_{i≠j} h(i, x)). u_k = d_k / ‖d_k‖.
- **Shift along vs across**: Δ = mean(T_l) − mean(B_l); parallel_k = Δ·u_k, orthogonal_k =
  ‖Δ − parallel_k u_k‖, also divided by ‖d_k‖ (the shift in units of the principle's own contrast).
- **Effective rank** of each centred cloud: exp(H(p)), p_i = σ_i / Σ σ (Roy & Vetterli 2007).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from si_toolkit.errors import SIError
from si_toolkit.principles import PrincipleSet

__all__ = [
    "GEOMETRY_SCHEMA",
    "GeometryConfig",
    "alternative_direction",
    "analyze_geometry",
    "antithesis_direction",
    "decompose_shift",
    "effective_rank",
    "geometry_figures",
    "hidden_state_clouds",
    "layer_geometry",
    "principle_directions",
    "render_inputs",
    "sinkhorn_divergence",
    "write_geometry",
]

FloatArray = npt.NDArray[np.float64]
GEOMETRY_SCHEMA = "si-toolkit/geometry/v1"
_MIN_NORM = 1e-12  # below this a direction is numerically zero and has no unit vector
# A direction shorter than this fraction of the states' RMS norm is float32 rounding noise (e.g.
# layer 0 with suffix pooling, where every variant embeds the same tokens): it is reported as
# undefined rather than blown up by dividing by it.
_MIN_REL_DIRECTION = 1e-5


# --------------------------------------------------------------------------------- pure math


def effective_rank(matrix: FloatArray) -> float:
    """exp(−Σ_i p_i log p_i) with p_i = σ_i / Σ_j σ_j, σ the singular values of `matrix` (N, D).

    Between 1 (one direction carries everything) and min(N, D); a matrix with r equal non-zero
    singular values has effective rank exactly r. The matrix is used as given: centre it first
    to measure the spread of a cloud rather than its offset. 0 for an all-zero matrix.
    """
    sigma = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    total = float(sigma.sum())
    if total <= 0.0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(math.exp(-np.sum(p * np.log(p))))


def decompose_shift(shift: FloatArray, direction: FloatArray) -> tuple[float, float]:
    """(parallel, orthogonal) parts of a shift vector Δ relative to a direction d (both (D,)).

        u = d / ‖d‖,   parallel = Δ·u,   orthogonal = ‖Δ − (Δ·u) u‖

    so parallel² + orthogonal² = ‖Δ‖². Raises ValueError for a zero direction.
    """
    norm = float(np.linalg.norm(direction))
    if norm < _MIN_NORM:
        raise ValueError("the direction is zero: it has no unit vector")
    u = np.asarray(direction, dtype=np.float64) / norm
    parallel = float(np.dot(shift, u))
    return parallel, float(np.linalg.norm(shift - parallel * u))


def antithesis_direction(states: FloatArray, positive: int, flipped: int) -> FloatArray:
    """d = mean_x (h[x, positive] − h[x, flipped]); states: (n, K, D) → (D,)."""
    out: FloatArray = np.mean(states[:, positive, :] - states[:, flipped, :], axis=0)
    return out


def alternative_direction(states: FloatArray, variant: int) -> FloatArray:
    """d = mean_x (h[x, j] − mean_{i≠j} h[x, i]); states: (n, K, D) → (D,)."""
    k = states.shape[1]
    others = (states.sum(axis=1) - states[:, variant, :]) / (k - 1)  # (n, D)
    out: FloatArray = np.mean(states[:, variant, :] - others, axis=0)
    return out


def principle_directions(states: FloatArray, principle_set: PrincipleSet) -> list[tuple[str, FloatArray]]:
    """(principle id, d) for each principle (antithesis) or variant (alternatives) of the set."""
    if principle_set.mode == "antithesis":
        return [(pid, antithesis_direction(states, pos, flip)) for pid, pos, flip in principle_set.principle_pairs()]
    return [(v.label, alternative_direction(states, j)) for j, v in enumerate(principle_set.variants)]


def sinkhorn_divergence(base: FloatArray, trained: FloatArray, *, epsilon: float = 0.1) -> float:
    """S_ε(trained, base) of `train.losses.sinkhorn_penalty`, standardised by the base cloud, float64."""
    import torch

    from si_toolkit.train.losses import sinkhorn_penalty

    value = sinkhorn_penalty(torch.from_numpy(np.asarray(trained, dtype=np.float64)),
                             torch.from_numpy(np.asarray(base, dtype=np.float64)),
                             epsilon=epsilon, dtype=torch.float64)
    return float(value)


def layer_geometry(base: FloatArray, trained: FloatArray, principle_set: PrincipleSet, *,
                   epsilon: float = 0.1) -> dict[str, Any]:
    """Every number of one layer from the (n, K, D) base and trained states (module docstring)."""
    if base.shape != trained.shape or base.ndim != 3:
        raise ValueError(f"states must be two (n, K, D) arrays of one shape, got {base.shape} and {trained.shape}")
    flat_b, flat_t = base.reshape(-1, base.shape[-1]), trained.reshape(-1, trained.shape[-1])  # (N, D)
    shift = flat_t.mean(axis=0) - flat_b.mean(axis=0)
    floor = max(_MIN_NORM, _MIN_REL_DIRECTION * float(np.sqrt(np.mean(np.sum(flat_b**2, axis=1)))))
    principles = []
    for pid, direction in principle_directions(base, principle_set):
        norm = float(np.linalg.norm(direction))
        entry: dict[str, Any] = {"id": pid, "direction_norm": norm, "parallel": None, "orthogonal": None,
                                 "parallel_rel": None, "orthogonal_rel": None}
        if norm >= floor:  # no contrast between the variants (identical tokens or texts): undefined
            parallel, orthogonal = decompose_shift(shift, direction)
            entry.update(parallel=parallel, orthogonal=orthogonal, parallel_rel=parallel / norm,
                         orthogonal_rel=orthogonal / norm)
        principles.append(entry)
    spread = float(np.sqrt(np.mean(np.sum((flat_b - flat_b.mean(axis=0)) ** 2, axis=1))))
    return {
        "sinkhorn": sinkhorn_divergence(flat_b, flat_t, epsilon=epsilon),
        "shift_norm": float(np.linalg.norm(shift)),
        "base_spread": spread,
        "effective_rank_base": effective_rank(flat_b - flat_b.mean(axis=0)),
        "effective_rank_trained": effective_rank(flat_t - flat_t.mean(axis=0)),
        "principles": principles,
    }


# --------------------------------------------------------------------------------- model I/O


@dataclass(frozen=True)
class GeometryConfig:
    """What `analyze_geometry` feeds the models and how it pools (recorded in geometry.json)."""

    prompts: str = field(default="builtin:mixed", metadata={"help": "builtin:NAME or a prompt file."})
    n_prompts: int = field(default=16, metadata={"help": "Held-out prompts to use (the first n)."})
    split: str = field(default="heldout", metadata={"help": "'heldout' (never trained on) or 'all'."})
    pool: str = field(default="suffix", metadata={"help": "'suffix' (tokens after the principle) or 'all' tokens."})
    prefill: bool = field(default=True, metadata={"help": "Render with the '<think>' prefill, as in training."})
    dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype for the forward passes (default bfloat16, as `si rank`)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    epsilon: float = field(default=0.1, metadata={"help": "Sinkhorn ε in base-standardised units (> 0)."})

    def __post_init__(self) -> None:
        if self.pool not in ("suffix", "all"):
            raise SIError(f"--pool {self.pool!r}: use 'suffix' or 'all'")
        if self.split not in ("heldout", "all"):
            raise SIError(f"--split {self.split!r}: use 'heldout' or 'all'")
        if self.n_prompts < 2 or self.batch_size < 1:
            raise SIError(f"--n-prompts {self.n_prompts} must be >= 2 and batch size >= 1")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise SIError(f"epsilon = {self.epsilon}: must be a finite number > 0")


def render_inputs(tokenizer: Any, principle_set: PrincipleSet, prompt_texts: Sequence[str], *, pool: str,
                  prefill: bool) -> tuple[list[list[int]], list[int]]:
    """Token ids of every (prompt, variant) in prompt-major order, and where pooling starts in each."""
    from si_toolkit.chat import render_prompt_ids

    ids, starts = [], []
    for text in prompt_texts:
        group = [render_prompt_ids(tokenizer, v.text, text, prefill=prefill) for v in principle_set.variants]
        shared = _common_suffix(group)
        for seq in group:
            ids.append(seq)
            starts.append(len(seq) - shared if pool == "suffix" else 0)
    return ids, starts


def _common_suffix(seqs: list[list[int]]) -> int:
    n = 0
    while n < min(len(s) for s in seqs) and len({s[-1 - n] for s in seqs}) == 1:
        n += 1
    return n


def hidden_state_clouds(model: Any, ids: list[list[int]], starts: list[int], *, batch_size: int) -> FloatArray:
    """Pooled hidden states of every input at every layer: (L + 1, N, D), float64."""
    import torch

    from si_toolkit.train.losses import pool_hidden_states

    device = next(model.parameters()).device
    parts = []
    for lo in range(0, len(ids), batch_size):
        batch, begin = ids[lo : lo + batch_size], starts[lo : lo + batch_size]
        width = max(len(s) for s in batch)
        tokens = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        pool = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, start) in enumerate(zip(batch, begin)):  # right padding: positions stay 0..len-1
            tokens[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            pool[row, start : len(seq)] = 1
        with torch.no_grad():
            out = model(input_ids=tokens.to(device), attention_mask=attention.to(device), output_hidden_states=True)
        stacked = torch.stack(out.hidden_states)  # (L+1, B, T, D)
        layers = stacked.shape[0]
        pooled = pool_hidden_states(stacked.flatten(0, 1), pool.to(device).repeat(layers, 1))  # ((L+1)·B, D)
        parts.append(pooled.reshape(layers, len(batch), -1).double().cpu().numpy())
    return np.concatenate(parts, axis=1)


def _model_clouds(ref: str, ids: list[list[int]], starts: list[int], config: GeometryConfig,
                  trust_remote_code: bool) -> tuple[FloatArray, dict[str, str]]:
    import torch

    from si_toolkit.models import load_causal_lm, resolve_model

    resolved = resolve_model(ref)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(resolved, dtype=config.dtype, device=device, trust_remote_code=trust_remote_code)
    try:
        clouds = hidden_state_clouds(model, ids, starts, batch_size=config.batch_size)
    finally:
        del model
    return clouds, {"ref": ref, "name": resolved.name, "path": resolved.path}


def analyze_geometry(base_ref: str, trained_ref: str, principles: Path | str, config: GeometryConfig = GeometryConfig(),
                     *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Per-layer geometry of TRAINED relative to BASE on a principle set's held-out inputs."""
    from si_toolkit.confirm.evaluate import heldout_split
    from si_toolkit.models import load_tokenizer, resolve_model
    from si_toolkit.principles import load_principle_set
    from si_toolkit.prompts import load_prompts

    principle_set = load_principle_set(principles)
    loaded = load_prompts(config.prompts)
    pool_set = heldout_split(loaded)[1] if config.split == "heldout" else loaded
    if len(pool_set) < config.n_prompts:
        raise SIError(f"--n-prompts {config.n_prompts}: the {config.split} split of {config.prompts} has only "
                      f"{len(pool_set)} prompts; lower --n-prompts or use a larger prompt set")
    prompts = pool_set.prompts[: config.n_prompts]
    texts = [p.text for p in prompts]
    render = {ref: render_inputs(load_tokenizer(resolve_model(ref), trust_remote_code=trust_remote_code),
                                 principle_set, texts, pool=config.pool, prefill=config.prefill)
              for ref in (base_ref, trained_ref)}
    if render[base_ref] != render[trained_ref]:
        raise SIError(f"{trained_ref} tokenises the inputs differently from {base_ref}; geometry compares the same "
                      "token ids, so TRAINED must be a fine-tune of BASE with the same tokenizer")
    ids, starts = render[base_ref]
    base, base_meta = _model_clouds(base_ref, ids, starts, config, trust_remote_code)
    trained, trained_meta = _model_clouds(trained_ref, ids, starts, config, trust_remote_code)
    if base.shape != trained.shape:
        raise SIError(f"{base_ref} and {trained_ref} have different shapes (layers, hidden size) "
                      f"{base.shape[0]}x{base.shape[2]} vs {trained.shape[0]}x{trained.shape[2]}; use a fine-tune of BASE")
    n, k = len(prompts), principle_set.K
    layers = [{"layer": layer, **layer_geometry(base[layer].reshape(n, k, -1), trained[layer].reshape(n, k, -1),
                                                principle_set, epsilon=config.epsilon)}
              for layer in range(base.shape[0])]
    return {
        "schema": GEOMETRY_SCHEMA, "base": base_meta, "trained": trained_meta,
        "principles": {"path": principle_set.path, "name": principle_set.name, "mode": principle_set.mode,
                       "K": k, "variant_labels": [v.label for v in principle_set.variants]},
        "config": asdict(config), "prompt_ids": [p.id for p in prompts], "n_points": n * k,
        "hidden_size": int(base.shape[2]), "layers": layers,
    }


# --------------------------------------------------------------------------------- output


_STYLES = [("o", "-", "black"), ("s", "--", "0.4"), ("^", ":", "black"), ("D", "-.", "0.55"), ("v", "-", "0.3"),
           ("P", "--", "0.6"), ("X", ":", "0.2")]  # marker, line style, grey level: readable in greyscale


def geometry_figures(result: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the three per-layer figures, keyed by file name."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from si_toolkit.report.figures import plain_label

    layers = [row["layer"] for row in result["layers"]]
    figures = {}
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.plot(layers, [row["sinkhorn"] for row in result["layers"]], marker="o", color="black")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="Sinkhorn divergence S_ε", title="How far training moved each layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    figures["sinkhorn_by_layer.png"] = _png(fig)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for key, label, (marker, style, grey) in (("effective_rank_base", "base", _STYLES[0]),
                                              ("effective_rank_trained", "trained", _STYLES[1])):
        ax.plot(layers, [row[key] for row in result["layers"]], marker=marker, linestyle=style, color=grey, label=label)
    ax.set(xlabel="layer (0 = embeddings)", ylabel="effective rank", title="Effective rank of the hidden states")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False)
    figures["effective_rank_by_layer.png"] = _png(fig)
    fig = Figure(figsize=(9, 3.4))
    for col, (key, title) in enumerate((("parallel_rel", "along the principle"), ("orthogonal_rel", "orthogonal to it"))):
        ax = fig.add_subplot(1, 2, col + 1)
        for n, entry in enumerate(result["layers"][0]["principles"]):
            marker, style, grey = _STYLES[n % len(_STYLES)]
            values = [row["principles"][n][key] for row in result["layers"]]
            ax.plot(layers, [np.nan if v is None else v for v in values], marker=marker, linestyle=style,
                    color=grey, label=plain_label(entry["id"]))
        ax.axhline(0.0, color="0.7", linewidth=0.8)
        ax.set(xlabel="layer", ylabel="mean shift / ‖principle direction‖", title=f"Shift {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(frameon=False, fontsize="small")
    figures["principle_shift_by_layer.png"] = _png(fig)
    return figures


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()  # keeps axis labels inside the canvas
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})  # no version stamp: bytes follow the data
    return buf.getvalue()


def write_geometry(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write geometry.json and figures/*.png into `out_dir` (atomically); returns the paths."""
    from si_toolkit.safeio import atomic_write_bytes, atomic_write_json

    out_dir = Path(out_dir)
    paths = [out_dir / "geometry.json"]
    atomic_write_json(paths[0], result)
    for name, data in geometry_figures(result).items():
        paths.append(out_dir / "figures" / name)
        atomic_write_bytes(paths[-1], data)
    return paths
