"""Benchmarks (``polyray bench``): one module per part (:mod:`.rollout_part` with its measurements in
:mod:`.rollout`, :mod:`.grpo`, :mod:`.polychromic`, :mod:`.reward`, :mod:`.generation`, :mod:`.chaos`,
:mod:`.learner`, :mod:`.canary`; polyray against TRL in :mod:`.peer`), what they share in
:mod:`.common`, and the suite as a whole (every part, the summary table) in :mod:`.suite`."""
