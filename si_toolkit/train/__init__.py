"""The ENIGMA trainer: GRPO with a format-only CoT reward, a SAMI auxiliary and a Sinkhorn regulariser.

Modules: `rewards` (reward terms over completion texts), `losses` (the pure loss functions),
`trainer` (the loop), `api` (`train()` for Python). `si.train(principles, **config)` calls
`si_toolkit.train.api.train`: the package itself is callable (see `si_toolkit._callable`).
This package imports nothing heavy, so `import si_toolkit.train.rewards` does not load torch.
"""

from si_toolkit._callable import make_callable

make_callable(__name__, "si_toolkit.train.api:train")
