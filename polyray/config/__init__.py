"""Configuration: pydantic models that mirror the YAML files, one module per section.

The bottom of the library but for :mod:`polyray.io`: this package imports nothing else of
polyray's, and neither torch, vLLM, Ray nor the sandbox, so a config loads (and a bad one
fails, naming its field) in a fraction of a second, and every piece (tasks, objectives,
models, diversity, rewards, the learner, the drivers) takes its settings from here.

| module | holds |
|---|---|
| :mod:`~polyray.config.run` | :class:`RunConfig` (``polyray run``), :func:`load_config`, :func:`phase_reward` |
| :mod:`~polyray.config.model` | ``model``: :class:`ModelConfig`, :class:`TinyModelConfig` |
| :mod:`~polyray.config.tasks` | every task's config model; :data:`TaskConfig` (all), :data:`TrainTaskConfig` |
| :mod:`~polyray.config.phases` | ``phases``: SFT, polychromic SFT, GRPO, expert iteration; :data:`PhaseConfig` |
| :mod:`~polyray.config.advantages` | every advantage estimator's config; :data:`AdvantageConfig`, ``Aggregation`` |
| :mod:`~polyray.config.sampling` | :class:`SamplingConfig` |
| :mod:`~polyray.config.rollout`, ``learner``, ``cluster``, ``tracking``, ``generation`` | those sections |
| :mod:`~polyray.config.eval` | ``eval``, ``dynamics``; the evaluation job's task entries |
| :mod:`~polyray.config.eval_job` | :class:`EvalJobConfig` (``polyray eval``), :func:`load_eval_config` |
| :mod:`~polyray.config.sweep` | :class:`SweepConfig` (``polyray sweep``); the rule that selection is on validation |
| :mod:`~polyray.config.experiment` | :class:`ExperimentConfig` (``polyray experiment``), its selections and hypotheses |
| :mod:`~polyray.config.reward` | ``reward`` and a phase's own reward |
| :mod:`~polyray.config.judge` | :class:`JudgeConfig` (the LLM judge's settings) |
| :mod:`~polyray.config.services` | the reward and generation services' settings (their Serve apps' ``args``) |
| :mod:`~polyray.config.names` | registry names configs accept: diversity functions, rewards, USQ selectors |

Names in a config are Literals declared here; ``tests/unit/config/test_registries.py`` keeps them
equal to the registries' keys.
"""

from polyray.config.advantages import AdvantageConfig
from polyray.config.cluster import ClusterConfig
from polyray.config.eval import DynamicsConfig, EvalConfig
from polyray.config.generation import GenerationConfig
from polyray.config.judge import JudgeConfig
from polyray.config.learner import LearnerConfig, LoraConfig
from polyray.config.model import ModelConfig, TinyModelConfig
from polyray.config.names import DiversityName, RewardName
from polyray.config.phases import (
    ExpertIterationPhaseConfig,
    GRPOPhaseConfig,
    PhaseConfig,
    PolychromicSFTPhaseConfig,
    SFTPhaseConfig,
)
from polyray.config.reward import PhaseRewardConfig, RewardConfig
from polyray.config.rollout import RolloutConfig
from polyray.config.run import RunConfig, load_config, phase_reward
from polyray.config.sampling import SamplingConfig
from polyray.config.tasks import TaskConfig, TrainTaskConfig
from polyray.config.tracking import TrackingConfig

__all__ = [
    "AdvantageConfig",
    "ClusterConfig",
    "DiversityName",
    "DynamicsConfig",
    "EvalConfig",
    "ExpertIterationPhaseConfig",
    "GRPOPhaseConfig",
    "GenerationConfig",
    "JudgeConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "PhaseConfig",
    "PhaseRewardConfig",
    "PolychromicSFTPhaseConfig",
    "RewardConfig",
    "RewardName",
    "RolloutConfig",
    "RunConfig",
    "SFTPhaseConfig",
    "SamplingConfig",
    "TaskConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainTaskConfig",
    "load_config",
    "phase_reward",
]
