"""The weight sync is real: vLLM under policy-v{t} scores a completion as the learner does."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import ray
import torch

from support.phase_harness import learner_logprobs, random_lora_policy

from polyray.config import SamplingConfig
from polyray.rollout.request import GenerationRequest
from polyray.tasks import build_task

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

# Both sides run the same float32 weights; they differ only in kernels (vLLM's CPU attention and
# fused LoRA ops vs eager PyTorch), i.e. in float32 summation order: ~1e-6 relative per op, a few
# 1e-5 absolute after four layers and a log-softmax over ~400 logits. 1e-3 leaves room for that and
# is still 30x below the gap between two adjacent versions that this test requires.
TOL = 1e-3


def random_policy(model_dir, run_config, seed: int):
    return random_lora_policy(model_dir, run_config.learner.lora, seed)


def test_rollout_logprobs_track_published_adapter(pool, model_dir, run_config):
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.objectives.grpo import compute_grpo_loss
    from polyray.models.batching import pack_sequences, token_logprobs
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=0)
    v1 = pool.newest_version() + 1
    pool.publish(v1, extract_adapter(model))

    prompt = build_task(run_config.task).prompts("val", 1)[0]
    sample = pool.generate(
        GenerationRequest(prompts=[prompt.text], n=1, sampling=SamplingConfig(max_tokens=12), version=v1)
    )[0][0]
    assert sample.version == v1 and len(sample.token_ids) >= 2
    P, C = sample.prompt_token_ids, sample.token_ids

    learner_v1 = learner_logprobs(model, P, C, tok.pad_token_id)
    rollout_v1 = torch.tensor(ray.get(pool.workers[0].score.remote(P, C, v1)))
    assert torch.allclose(rollout_v1, learner_v1, atol=TOL), (rollout_v1, learner_v1)
    assert torch.allclose(torch.tensor(sample.logprobs), learner_v1, atol=TOL)  # sampling-time logprobs too

    # One real optimizer step on this sample, then publish v2.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    logp, mask = token_logprobs(model, pack_sequences([P], [C], tok.pad_token_id))
    loss, _ = compute_grpo_loss(logp, logp.detach(), None, torch.tensor([-1.0]), mask)
    loss.backward()
    opt.step()
    v2 = v1 + 1
    pool.publish(v2, extract_adapter(model))

    learner_v2 = learner_logprobs(model, P, C, tok.pad_token_id)
    rollout_v2 = torch.tensor(ray.get(pool.workers[0].score.remote(P, C, v2)))
    assert torch.allclose(rollout_v2, learner_v2, atol=TOL)
    gap = (rollout_v2 - rollout_v1).abs().max().item()
    assert gap > 30 * TOL, f"v2 should score the completion differently from v1 (max gap {gap})"
    # the older version is still served as it was
    assert torch.allclose(torch.tensor(ray.get(pool.workers[0].score.remote(P, C, v1))), rollout_v1, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_sampling_logprobs_are_the_sampling_distribution(pool, model_dir, run_config, temperature):
    """At lag 0 the GRPO ratio pi_theta / pi_old is 1: both sides are log softmax(logits / T) of the drawn tokens."""
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.models.batching import pack_sequences, token_logprobs
    from polyray.objectives.grpo import compute_grpo_loss
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=1)
    version = pool.newest_version() + 1
    pool.publish(version, extract_adapter(model))
    prompts = build_task(run_config.task).prompts("val", 4)
    sampling = SamplingConfig(temperature=temperature, max_tokens=12)
    groups = pool.generate(
        GenerationRequest(prompts=[p.text for p in prompts], n=4, sampling=sampling, version=version)
    )
    samples = [s for g in groups for s in g]
    batch = pack_sequences([s.prompt_token_ids for s in samples], [s.token_ids for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, mask = token_logprobs(model, batch, temperature)
        raw, _ = token_logprobs(model, batch)
    old = torch.zeros_like(logp)
    for i, s in enumerate(samples):
        start = len(s.prompt_token_ids) - 1
        old[i, start : start + len(s.token_ids)] = torch.tensor(s.logprobs)
    _, metrics = compute_grpo_loss(logp, old, None, torch.ones(len(samples)), mask)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-3), metrics
    assert (logp - old)[mask.bool()].abs().max() < TOL
    if temperature != 1.0:  # the T = 1 log-probs would not do: the test can tell them apart
        assert (raw - old)[mask.bool()].abs().max() > 30 * TOL


def test_request_seeds_make_samples_independent_and_reproducible(pool, run_config):
    """The same prompt twice in one batch gets different samples; the same run seed gets the same ones."""
    from polyray.config import SamplingConfig
    from polyray.rollout.sampling import request_seeds
    from polyray.tasks import build_task

    text = build_task(run_config.task).prompts("val", 1)[0].text
    sampling = SamplingConfig(max_tokens=12)

    def draw(run_seed: int) -> list[list[str]]:
        seeds = request_seeds(run_seed, "grpo:0", ["0", "1"])
        return [
            [s.text for s in g]
            for g in pool.generate(GenerationRequest(prompts=[text, text], n=6, sampling=sampling, seeds=seeds))
        ]

    first = draw(0)
    assert first[0] != first[1], first  # identical prompts, independent samples
    assert draw(0) == first  # reproducible
    assert draw(1) != first  # another run seed, other samples


def test_completion_texts_are_vllms_own(pool, run_config):
    """Rollouts ask vLLM for token ids only and decode each completion once (decode_completions); a stop
    string that never matches turns vLLM's own detokenizer on without changing a sampled token: the
    texts must be the same, EOS-ended and cut-off samples alike."""
    from polyray.config import SamplingConfig
    from polyray.rollout.sampling import request_seeds
    from polyray.tasks import build_task

    texts = [p.text for p in build_task(run_config.task).prompts("val", 4)]
    seeds = request_seeds(0, "texts", [str(i) for i in range(len(texts))])

    def draw(stop: list[str]):
        groups = pool.generate(
            GenerationRequest(prompts=texts, n=8, sampling=SamplingConfig(max_tokens=5, stop=stop), seeds=seeds)
        )
        return [[(s.token_ids, s.text, s.finished) for s in g] for g in groups]

    ours, vllms = draw([]), draw(["<never in a completion>"])
    assert ours == vllms
    samples = [s for g in ours for s in g]
    assert any(finished for *_, finished in samples) and not all(finished for *_, finished in samples)
    assert any(text.strip() for _, text, _ in samples)


def test_sync_canary_catches_a_worker_that_kept_old_weights(pool, model_dir, run_config):
    """A sync that silently does nothing: the store records v+1's new weights, but the worker
    serves the old ones under that id. The canary sees it and stops the run."""
    from polyray.learner.lora import extract_adapter
    from polyray.learner.phases import encode_references
    from polyray.learner.sync import SyncCanary, SyncCanaryError
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=2)
    probe = encode_references(build_task(run_config.task).prompts("val", 1), tok)[0]
    canary = SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id)
    version = pool.newest_version() + 1
    old = extract_adapter(model)
    pool.publish(version, old)
    assert canary.after_publish(model, pool, version)["canary_gap"] < canary.tolerance

    with torch.no_grad():  # the learner moves on ...
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.05)
    ray.get(pool.store.put.remote(version + 1, extract_adapter(model)))  # ... the store has the new weights ...
    ray.get(pool.workers[0].load_adapter.remote(version + 1, old))  # ... the worker kept the old ones
    with pytest.raises(SyncCanaryError, match=f"serves policy-v{version + 1} with log-probs"):
        canary.after_publish(model, pool, version + 1)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sync_canary_checks_the_sampling_path_at_the_phase_temperature(pool, model_dir, run_config, temperature):
    """Prompt log-probs are at T = 1 whatever a request asks, so at another sampling temperature the
    canary has the worker draw the probe prompt's continuation as rollouts are drawn: its sampling-time
    log-probs are the learner's log softmax(logits / T) of the drawn tokens."""
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.learner.phases import encode_references
    from polyray.learner.sync import DRAW_SEED, DRAW_TOKENS, SyncCanary
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=4)
    probe = encode_references(build_task(run_config.task).prompts("val", 1), tok)[0]
    version = pool.newest_version() + 1
    pool.publish(version, extract_adapter(model))
    canary = SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id, temperature=temperature)
    metrics = canary.after_publish(model, pool, version)
    assert metrics["canary_gap"] < canary.tolerance and metrics["canary_gap_t"] < canary.tolerance, metrics
    sampling = SamplingConfig(temperature=temperature, max_tokens=DRAW_TOKENS)
    sample = pool.draw(probe[0], sampling, version, 0, DRAW_SEED)
    assert sample.version == version and sample.prompt_token_ids == probe[0]
    assert len(sample.logprobs) == len(sample.token_ids) >= 1
    raw = learner_logprobs(model, probe[0], sample.token_ids, tok.pad_token_id).double()
    assert (raw - torch.tensor(sample.logprobs, dtype=torch.float64)).abs().max() > 10 * TOL  # not T = 1 log-probs


def test_version_ids_never_repeat_and_mean_one_set_of_weights(pool, model_dir, run_config):
    """A learner restarted from a checkpoint at version c, after the lost attempt published c+1..c+2:
    re-publishing under c+1 is refused by the store, and a worker holding c+1 refuses other weights
    under that id; the resumed learner numbers after the store's newest and the workers serve it."""
    from polyray.learner.lora import extract_adapter
    from polyray.learner.phases import encode_references
    from polyray.learner.sync import SyncCanary
    from polyray.rollout.store import AdapterHashError, VersionReusedError
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=3)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    snapshots = []
    c = pool.newest_version() + 1
    for v in (c, c + 1, c + 2):  # the lost attempt: three published versions
        with torch.no_grad():
            for p in lora_b:
                p.normal_(0, 0.02)
        snapshots.append([p.detach().clone() for p in lora_b])
        pool.publish(v, extract_adapter(model))
    with torch.no_grad():  # the resumed learner holds the checkpoint at version c
        for p, saved in zip(lora_b, snapshots[0]):
            p.copy_(saved)
    checkpoint = extract_adapter(model)
    with pytest.raises(VersionReusedError, match=f"version {c + 1} was already handed out"):
        pool.publish(c + 1, checkpoint)  # numbering restarted after c
    with pytest.raises(AdapterHashError, match=f"version {c + 2} is already loaded with other weights"):
        ray.get(pool.workers[0].load_adapter.remote(c + 2, checkpoint))
    fresh = pool.newest_version() + 1
    assert fresh == c + 3
    pool.publish(fresh, checkpoint)
    canary = SyncCanary(
        every=1, probe=encode_references(build_task(run_config.task).prompts("val", 1), tok)[0], pad_id=tok.pad_token_id
    )
    assert canary.check(model, pool, fresh) < canary.tolerance
    from polyray.rollout.store import adapter_hash

    record = lambda v: ray.get(pool.store.record.remote(v))  # noqa: E731
    assert record(fresh).sha256 == record(c).sha256 == adapter_hash(checkpoint)  # one set of weights, two ids
    assert record(c + 1).sha256 != record(c).sha256


def test_publish_next_reserves_then_stores_while_the_workers_load(pool, model_dir, run_config):
    """The learner's publish: the store hands out the next id, persists the weights under it and every
    worker serves them (the canary agrees with the learner), the store's record carrying the learner's
    hash; the id, now reserved for those weights, takes no others."""
    from polyray.learner.lora import extract_adapter
    from polyray.learner.phases import encode_references
    from polyray.learner.sync import SyncCanary
    from polyray.rollout.store import VersionReusedError, adapter_hash
    from polyray.tasks import build_task

    model, tok = random_policy(model_dir, run_config, seed=5)
    adapter = extract_adapter(model)
    newest = pool.newest_version()
    version, seconds = pool.publish_next(adapter, "grpo", 7)
    assert version == newest + 1 and seconds > 0 and pool.newest_version() == version
    record = ray.get(pool.store.record.remote(version))
    assert (record.sha256, record.phase, record.step) == (adapter_hash(adapter), "grpo", 7)
    assert all(version in ray.get(w.versions.remote()) for w in pool.workers)
    canary = SyncCanary(
        every=1, probe=encode_references(build_task(run_config.task).prompts("val", 1), tok)[0], pad_id=tok.pad_token_id
    )
    assert canary.check(model, pool, version) < canary.tolerance  # the workers serve the learner's weights
    other, _ = random_policy(model_dir, run_config, seed=6)
    with pytest.raises(VersionReusedError):
        pool.publish(version, extract_adapter(other))
    assert pool.publish_next(extract_adapter(other))[0] == version + 1


def test_a_publish_not_waited_for_is_what_the_next_request_samples(pool, model_dir, run_config):
    """Rollouts one step ahead: the learner asks for samples under a version whose publish it did not wait
    for, while the workers still generate the step before; the samples come from the new weights, and
    the publish completes with each worker's incarnation id and the store's record."""
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.rollout.store import adapter_hash
    from polyray.tasks import build_task

    prompts = build_task(run_config.task).prompts("val", 8)
    model, tok = random_policy(model_dir, run_config, seed=7)
    adapter = extract_adapter(model)
    # the step before's generation, still running while the publish starts
    busy = pool.submit(
        GenerationRequest(prompts=[p.text for p in prompts], n=8, sampling=SamplingConfig(max_tokens=24))
    )
    pending = pool.start_publish(adapter, "grpo", 3)
    sample = pool.generate(
        GenerationRequest(
            prompts=[prompts[0].text], n=1, sampling=SamplingConfig(max_tokens=12), version=pending.version
        )
    )[0][0]
    assert len(busy.result()) == len(prompts)
    assert sample.version == pending.version and len(sample.token_ids) >= 2
    learner = learner_logprobs(model, sample.prompt_token_ids, sample.token_ids, tok.pad_token_id)
    assert torch.allclose(torch.tensor(sample.logprobs), learner, atol=TOL), (sample.logprobs, learner)
    assert pending.result() == pool.incarnations()
    assert ray.get(pool.store.record.remote(pending.version)).sha256 == adapter_hash(adapter)


def test_samples_carry_their_kl_reference_log_probs(pool, model_dir, run_config, tmp_path):
    """A request that names a KL reference gets each sample scored under it right after it is drawn (vLLM
    prompt log-probs, kl_reference_logprobs 'rollouts'): under a named adapter (the phase-start reference)
    or the base model, as the learner computes them. A sequence that fills the model length is left unscored."""
    from dataclasses import replace

    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter, save_adapter
    from polyray.rollout.worker import BASE_MODEL
    from polyray.tasks import build_task

    policy, tok = random_policy(model_dir, run_config, seed=5)
    version = pool.newest_version() + 1
    pool.publish(version, extract_adapter(policy))
    reference, _ = random_policy(model_dir, run_config, seed=6)
    pool.add_named_adapter("test/kl-reference", str(save_adapter(reference, tmp_path / "reference")))
    prompts = [p.text for p in build_task(run_config.task).prompts("val", 3)]
    request = GenerationRequest(prompts=prompts, n=2, sampling=SamplingConfig(max_tokens=12), version=version)

    groups = pool.generate(replace(request, reference="test/kl-reference"))
    gap = 0.0
    for sample in (s for g in groups for s in g):
        P, C = sample.prompt_token_ids, sample.token_ids
        expected = learner_logprobs(reference, P, C, tok.pad_token_id)
        assert torch.allclose(torch.tensor(sample.ref_logprobs), expected, atol=TOL), (sample.ref_logprobs, expected)
        assert torch.allclose(torch.tensor(sample.logprobs), learner_logprobs(policy, P, C, tok.pad_token_id), atol=TOL)
        gap = max(gap, (torch.tensor(sample.ref_logprobs) - torch.tensor(sample.logprobs)).abs().max().item())
    assert gap > 30 * TOL  # the reference is not the policy: the check could tell them apart

    for sample in (s for g in pool.generate(replace(request, reference=BASE_MODEL)) for s in g):
        with policy.disable_adapter():
            expected = learner_logprobs(policy, sample.prompt_token_ids, sample.token_ids, tok.pad_token_id)
        assert torch.allclose(torch.tensor(sample.ref_logprobs), expected, atol=TOL)
    assert all(s.ref_logprobs is None for g in pool.generate(replace(request, prompts=prompts[:1])) for s in g)

    P = groups[0][0].prompt_token_ids
    full = [
        P + [5] * (run_config.rollout.max_model_len - len(P)),
        P + [5] * (run_config.rollout.max_model_len - len(P) - 1),
    ]
    scored = ray.get(pool.workers[0].score_sequences.remote([(P, c[len(P) :]) for c in full], reference=BASE_MODEL))
    assert scored[0] is None and len(scored[1]) == run_config.rollout.max_model_len - len(P) - 1


def test_a_pool_the_runs_of_a_sweep_share_serves_each_run_its_own_weights(ray_cluster, model_dir, run_config, tmp_path):
    """Trials run one at a time share one pool (polyray.drivers.warm): each run's store is found by the name the
    workers were given, and the next run's version 1 (the same id, other weights) is served as that run's adapter,
    never the last run's; the last run's named adapters (a KL reference) are gone."""
    from polyray.learner.lora import extract_adapter, save_adapter
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store
    from polyray.rollout.worker import MissingAdapterError
    from polyray.tasks import build_task

    name = "polyray-adapter-store-test-shared"
    pool = RolloutPool.launch(str(model_dir), run_config.rollout, run_config.model.dtype, 0, name, run="first")
    prompt = build_task(run_config.task).prompts("val", 1)[0]
    served = []
    try:
        for run, seed in (("first", 0), ("second", 1)):
            store = open_store(tmp_path / run, name=name)
            pool.start_run(store, run)
            assert ray.get(pool.workers[0].versions.remote()) == []  # nothing of the last run
            model, tok = random_policy(model_dir, run_config, seed)
            pool.publish(1, extract_adapter(model))
            sample = pool.generate(
                GenerationRequest(
                    prompts=[prompt.text], n=1, sampling=SamplingConfig(max_tokens=12), version=1, seeds=[7]
                )
            )[0][0]
            P, C = sample.prompt_token_ids, sample.token_ids
            learner = learner_logprobs(model, P, C, tok.pad_token_id)
            served.append(torch.tensor(ray.get(pool.workers[0].score.remote(P, C, 1))))
            assert torch.allclose(served[-1], learner, atol=TOL), (run, served[-1], learner)
            assert torch.allclose(torch.tensor(sample.logprobs), learner, atol=TOL), run
            if run == "first":
                save_adapter(model, tmp_path / "reference")
                pool.add_named_adapter("reference", str(tmp_path / "reference"))
                first = (P, C)
                ray.get(pool.workers[0].score_sequences.remote([first], reference="reference"))
            ray.kill(store)  # as a run ends
        with pytest.raises(MissingAdapterError):
            ray.get(pool.workers[0].score_sequences.remote([first], reference="reference"))
        again = torch.tensor(ray.get(pool.workers[0].score.remote(*first, 1)))  # the first run's tokens, v1 now
        gap = (again - served[0]).abs().max().item()
        assert gap > 30 * TOL, f"the second run's version 1 scored as the first run's (max gap {gap})"
    finally:
        pool.shutdown()


def test_a_rollout_worker_samples_without_importing_scikit_learn(pool, run_config):
    """transformers imports scikit-learn (with scipy.stats and pandas) for a generation feature vLLM never
    uses; a rollout worker skips it through its engine's start and sampling, and it stays importable."""
    texts = [p.text for p in build_task(run_config.task).prompts("val", 2)]
    assert pool.generate(GenerationRequest(prompts=texts, n=2, sampling=SamplingConfig(max_tokens=4)))
    worker = pool.workers[0]
    assert not ray.get(worker.__ray_call__.remote(lambda self: "sklearn" in sys.modules))
    # importable again (looked up, not imported: the session's worker serves later tests)
    assert ray.get(worker.__ray_call__.remote(lambda self: importlib.util.find_spec("sklearn") is not None))
