"""TrainConfig: defaults, presets, YAML + override resolution, type conversion and every rule's error."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from si_toolkit.errors import SIError
from si_toolkit.train.config import (
    DEFAULT_LAMBDA_OT,
    DEFAULT_LAMBDA_SAMI,
    PRESETS,
    TrainConfig,
    config_help,
    load_train_config,
    parse_set_options,
)


def test_defaults_follow_trl_where_documented() -> None:
    c = TrainConfig()
    assert (c.dtype, c.num_generations, c.temperature, c.epsilon, c.beta) == ("float32", 4, 1.0, 0.2, 0.0)
    assert (c.loss_type, c.importance_level, c.scale_rewards, c.num_iterations) == ("dapo", "token", "group", 1)
    assert (c.preset, c.sami_critic, c.sami_span, c.reward) == ("enigma", "mean", "cot", "graded")
    assert c.sami_weight == DEFAULT_LAMBDA_SAMI and c.ot_weight == DEFAULT_LAMBDA_OT


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_decide_which_terms_are_on(preset: str) -> None:
    sami_on, ot_on = PRESETS[preset]
    c = TrainConfig(preset=preset)  # type: ignore[arg-type]
    assert (c.sami_weight > 0) == sami_on and (c.ot_weight > 0) == ot_on


def test_preset_weights_can_be_tuned_but_not_contradicted() -> None:
    assert TrainConfig(preset="enigma", lambda_sami=0.25).sami_weight == 0.25
    with pytest.raises(SIError, match="lambda_sami=0.5 contradicts preset='grpo'"):
        TrainConfig(preset="grpo", lambda_sami=0.5)
    with pytest.raises(SIError, match="lambda_ot=0 contradicts preset='grpo\\+ot'"):
        TrainConfig(preset="grpo+ot", lambda_ot=0.0)


def test_resolved_config_round_trips_through_its_dict() -> None:
    c = TrainConfig(preset="grpo+sami", lambda_sami=0.3, ot_layers=[-1, 2])
    assert TrainConfig(**c.to_dict()) == c


def test_yaml_then_overrides_later_wins(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    # PyYAML reads 1e-4 as a *string* (YAML 1.1 needs a dot); the loader converts it by the field type.
    path.write_text("learning_rate: 1e-4\nmax_steps: 7\nlr_schedule: constant\not_layers: [-1, -3]\n", encoding="utf-8")
    c = load_train_config(path, {"max_steps": "9", "epsilon_high": "0.28"})
    assert c.learning_rate == 1e-4 and isinstance(c.learning_rate, float)
    assert c.max_steps == 9 and c.lr_schedule == "constant" and c.ot_layers == [-1, -3] and c.epsilon_high == 0.28


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("ot_layers", "-1,-8", [-1, -8]),
        ("ot_layers", "[ -2 ]", [-2]),
        ("lora_targets", "q_proj, v_proj", ["q_proj", "v_proj"]),
        ("prefill", "false", False),
        ("monitor_off_terms", "YES", True),
        ("n_prompts", "none", None),
        ("n_prompts", "12", 12),
        ("max_grad_norm", "0", 0.0),
        ("eval_prompts", "builtin:open", "builtin:open"),
    ],
    ids=["int-list", "bracketed", "str-list", "bool-false", "bool-yes", "none", "optional-int", "float", "optional-str"],
)
def test_command_line_strings_become_the_field_type(key: str, text: str, expected: object) -> None:
    overrides = {key: text}
    if key == "eval_prompts":
        overrides["eval_every"] = "5"
    assert getattr(load_train_config(None, overrides), key) == expected


def test_unknown_key_names_the_key_and_the_closest_one(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("learning_rat: 0.1\n", encoding="utf-8")
    with pytest.raises(SIError, match=r"train.yaml: unknown training option 'learning_rat'; did you mean 'learning_rate'"):
        load_train_config(path)
    with pytest.raises(SIError, match="unknown training option 'G'"):
        load_train_config(None, {"G": "4"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_type": "ppo"}, "loss_type='ppo': expected 'grpo' | 'dr_grpo' | 'dapo'"),
        ({"num_generations": "four"}, "num_generations='four': expected int"),
        ({"num_generations": 1}, "a GRPO group needs at least 2"),
        ({"prefill": "maybe"}, "prefill='maybe': expected bool"),
        ({"max_steps": True}, "max_steps=True: expected int"),
        ({"temperature": 0}, "temperature=0.0: must be in"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"epsilon": 1.0}, "epsilon=1.0: must be in"),
        ({"beta": -0.1}, "beta=-0.1: must be >= 0"),
        ({"learning_rate": "nan"}, "learning_rate=nan: must be a finite"),
        ({"prompts_per_step": 3, "grad_accum": 2}, "not a multiple of grad_accum=2"),
        ({"warmup_steps": 20, "max_steps": 10}, "warmup_steps=20 exceeds max_steps=10"),
        ({"ot_layers": []}, "ot_layers is empty"),
        ({"ot_layers": [-1, -1]}, "repeats a layer"),
        ({"eval_every": 5}, "eval_every=5 needs eval_prompts"),
        ({"reward_length_soft_chars": 10, "reward_length_max_chars": 5}, "length_soft_chars=10"),
        ({"lambda_ot": -1.0}, "lambda_ot=-1.0: must be a finite number >= 0"),
        ({"parallelism": "fsdp", "lora_r": 8}, "parallelism=fsdp with lora_r=8"),
        ({"parallelism": "zero3"}, "parallelism='zero3': expected 'ddp' | 'fsdp'"),
    ],
    ids=["literal", "int-text", "G<2", "bool-text", "bool-for-int", "temperature", "top_p", "epsilon", "beta", "nan",
         "accum-divides", "warmup", "no-layers", "dup-layers", "eval-needs-prompts", "reward-rule", "negative-lambda",
         "fsdp-lora", "parallelism"],
)
def test_bad_values_raise_sierror_with_the_rule(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SIError, match=message.replace("(", r"\(").replace("+", r"\+").replace("|", r"\|")):
        load_train_config(None, overrides)


def test_parse_set_options() -> None:
    assert parse_set_options(["a=1", "b==2", "a=3"]) == {"a": "3", "b": "=2"}
    with pytest.raises(SIError, match="expected key=value"):
        parse_set_options(["learning_rate"])


def test_every_field_has_help_text() -> None:
    rows = config_help()
    assert len(rows) == len(TrainConfig.__dataclass_fields__)
    assert all(text for _, _, text in rows)
    assert ("ot_layers", "[-1]", rows[[r[0] for r in rows].index("ot_layers")][2]) in rows


@pytest.mark.parametrize(("raw", "expected"), [(True, "group"), (False, "none"), ("false", "none"), ("batch", "batch")],
                         ids=["yaml-true", "yaml-false", "cli-false", "name"])
def test_scale_rewards_takes_trl_spellings(raw: object, expected: str, tmp_path: Path) -> None:
    """TRL accepts scale_rewards: true/false for group/none; a ported config means the same here."""
    assert load_train_config(None, {"scale_rewards": raw}).scale_rewards == expected
    path = tmp_path / "trl.yaml"
    path.write_text(f"scale_rewards: {str(raw).lower()}\nmask_truncated_completions: true\n", encoding="utf-8")
    ported = load_train_config(path)
    assert ported.scale_rewards == expected and ported.mask_truncated_completions is True


@pytest.mark.parametrize(("loss_type", "warns"), [("dapo", True), ("dr_grpo", True), ("grpo", False)])
def test_sequence_level_importance_warns_with_token_sum_losses(loss_type: str, warns: bool) -> None:
    """As TRL warns: dapo / dr_grpo sum per-token terms, so GSPO's per-sequence objective is lost."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainConfig(importance_level="sequence", loss_type=loss_type)  # type: ignore[arg-type]
        TrainConfig(importance_level="token", loss_type=loss_type)  # type: ignore[arg-type]
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == (1 if warns else 0), messages
    if warns:
        assert f"loss_type={loss_type!r}" in messages[0] and "set loss_type='grpo'" in messages[0]
