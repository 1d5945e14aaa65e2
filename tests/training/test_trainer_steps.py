"""The trainer's visible steps with a pluggable loss and batch source (what distillation reuses)."""
from __future__ import annotations

import torch

from seg3d.core.settings import TrainSettings
from seg3d.training.trainer import Trainer


class _TeacherBatches:
    """Batches with an extra target (soft labels of a 'teacher') beside image and label."""

    def __init__(self, patch, channels: int, classes: int):
        self.patch, self.channels, self.classes, self.epochs = tuple(patch), channels, classes, []

    def epoch(self, n: int):
        self.epochs.append(n)
        g = torch.Generator().manual_seed(n)
        while True:
            image = torch.randn(2, self.channels, *self.patch, generator=g)
            label = torch.randint(0, self.classes, (2, 1, *self.patch), generator=g)
            soft = torch.softmax(torch.randn(2, self.classes, *self.patch, generator=g), 1)
            yield {"image": image, "label": label, "teacher": soft}


def test_steps_with_a_custom_loss_and_batch_source(plan_dir, tmp_path):
    seen = []

    def distill_loss(outputs, batch):
        out = outputs[0] if isinstance(outputs, list) else outputs  # full resolution first
        seen.append((tuple(batch["teacher"].shape), batch["teacher"].device.type))
        return torch.nn.functional.kl_div(torch.log_softmax(out, 1), batch["teacher"], reduction="batchmean")

    settings = TrainSettings(fold="0", epochs=2, iters_per_epoch=1, device="cpu", precision="fp32",
                             val_batches=1, validate=False)
    from seg3d.core.plan import Plan

    plan = Plan.load(plan_dir)
    cfg = plan.config("3d_fullres")
    batches = _TeacherBatches(cfg.patch_size, plan.num_channels, plan.num_classes)
    lines: list[str] = []
    trainer = Trainer(plan_dir, settings, model_dir=tmp_path / "student", log=lines.append,
                      loss_fn=distill_loss, batches=batches)
    trainer.setup()
    first = trainer.run_epoch()  # one step at a time, as a caller composing its own loop would
    assert first.iterations == 1 and len(first.losses) == 1 and first.losses[0] >= 0
    trainer.end_epoch(first)
    assert trainer.state.epoch == 1 and trainer.folder.checkpoint_path(0, "latest").is_file()
    second = trainer.run_epoch()
    trainer.end_epoch(second)
    out = trainer.finish()
    trainer.close()
    assert out["steps"] == 2 and out["epochs"] == 2 and batches.epochs == [0, 1]
    assert seen == [((2, plan.num_classes, *cfg.patch_size), "cpu")] * 2
    assert trainer.folder.checkpoint_path(0, "final").is_file()
    assert any(line.startswith("epoch 1:") for line in lines)
