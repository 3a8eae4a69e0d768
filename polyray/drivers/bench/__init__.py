"""Benchmarks (``polyray bench``): the parts in :mod:`.suite`, their measurements in :mod:`.rollout`,
:mod:`.reward` and :mod:`.generation`."""
