"""What the forkserver of the tests' gloo ranks imports first (:func:`support.phase_harness.spawn_ranks`): the model
libraries as a learner rank imports them (without scikit-learn)."""

from polyray.learner.lora import import_model_libraries

import_model_libraries()
