"""The ENIGMA trainer: GRPO with a format-only CoT reward, a SAMI auxiliary and a Sinkhorn regulariser.

Modules: `rewards` (reward terms over completion texts), `losses` (the pure loss functions).
Import them directly; this package imports nothing so that `import si_toolkit.train.rewards`
does not load torch.
"""
