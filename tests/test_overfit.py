"""A tiny overfit check: the student fits one detection batch and one segmentation batch with both heads."""

from __future__ import annotations

import torch

from engine.core.settings import LossSettings
from engine.models import build_model, load_model_config
from engine.train import objectives as O

STEPS = 25
FACTOR = 3.0  # each head's loss must fall at least this much over STEPS steps on its fixed batch


def test_student_overfits_one_batch_of_each_task():
    torch.manual_seed(0)
    loss = LossSettings()
    net = build_model(load_model_config("models/student.yaml")).train()
    size = 64
    images_det = torch.randn(2, 3, size, size)
    boxes = torch.tensor(
        [[[8.0, 8.0, 40.0, 30.0], [0.0, 0.0, 0.0, 0.0]], [[20.0, 30.0, 60.0, 62.0], [2.0, 2.0, 18.0, 20.0]]]
    )
    labels = torch.tensor([[0, -1], [1, 2]])
    images_seg = torch.randn(2, 3, size, size)
    mask = torch.zeros(2, size, size, dtype=torch.long)
    mask[:, :, size // 2 :] = 2
    mask[0, 10:30, 10:30] = 1
    mask[1, 40:60, 5:25] = 3
    anchors = net.anchors_for((size, size))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        det = sum(O.detection_supervised(net(images_det), boxes, labels, anchors, loss).values())
        det.backward()
        seg = sum(O.segmentation_supervised(net(images_seg), mask, loss).values())
        seg.backward()
        optimizer.step()
        history.append((det.item(), seg.item()))
    (det0, seg0), (det1, seg1) = history[0], history[-1]
    assert det1 < det0 / FACTOR, f"detection loss {det0:.3f} -> {det1:.3f}"
    assert seg1 < seg0 / FACTOR, f"segmentation loss {seg0:.3f} -> {seg1:.3f}"
