"""The rank pipeline: run folder, sampling, scoring, estimation (SI-SPEC §1-5).

`si.rank(sets, prompts, model, profile, **options)` calls `si_toolkit.rank.api.rank`: the package
itself is callable (see `si_toolkit._callable`), and its help is `help(si_toolkit.rank.api.rank)`.
"""

from si_toolkit._callable import make_callable

make_callable(__name__, "si_toolkit.rank.api:rank")
