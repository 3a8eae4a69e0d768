"""Benchmarks (``polyray bench``): the parts in :mod:`.suite`, their measurements in :mod:`.rollout`,
:mod:`.reward`, :mod:`.generation` and :mod:`.learner`; polyray against TRL in :mod:`.peer`."""
