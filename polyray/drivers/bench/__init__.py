"""Benchmarks (``polyray bench``): one module per part (:mod:`.rollout_part` with its measurements in
:mod:`.rollout`, :mod:`.grpo`, :mod:`.polychromic`, :mod:`.reward`, :mod:`.generation`, :mod:`.chaos`,
:mod:`.learner`, :mod:`.canary`; polyray against TRL in :mod:`.peer`), what they share in
:mod:`.common`, and the suite as a whole (every part, the summary table) in :mod:`.suite`."""

# the parts `polyray bench all --parts` may name (each has its --smoke arguments in :data:`.suite.SMOKE`): here, not in
# .suite, so that the command line checks --parts without importing a part's driver
PARTS = ("rollout", "grpo", "polychromic", "reward", "generation", "learner", "peer", "chaos")
