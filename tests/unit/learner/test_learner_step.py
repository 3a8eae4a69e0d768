"""The learner's update step (polyray.learner.loop._train_step) runs the model in train mode, every module of it."""

from __future__ import annotations

from support.phase_harness import tiny_model_dir

from polyray.config import LoraConfig


def test_every_module_trains_in_a_step(tmp_path):
    """from_pretrained leaves the base model's modules in eval mode under a peft root that says it is training;
    a step must put them all in train mode (LoRA dropout is live only there), also after a probe set them to
    eval (the sync canary) and on a model whose root is already in train mode."""
    from polyray.learner.loop import _train_step, build_optimizer
    from polyray.learner.lora import build_peft_model

    model, _ = build_peft_model(str(tiny_model_dir(tmp_path)), LoraConfig(r=4, alpha=8, dropout=0.1))
    assert model.training and not all(m.training for m in model.modules())  # the state the step starts from
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-3, 0.0)

    class Phase:
        seen: list[bool] = []

        def step(self, step, version):
            self.seen.append(all(m.training for m in model.modules()))
            return {}

    phase = Phase()
    _train_step(model, phase, optimizer, params=params, grad_clip=1.0, step=0, version=0)
    model.base_model.model.model.eval()  # a probe that left part of the model in eval mode
    _train_step(model, phase, optimizer, params=params, grad_clip=1.0, step=1, version=0)
    assert phase.seen == [True, True]
