"""Every loss against tiny cases whose answer is written out by hand with math.log/exp (issue 3)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.core.errors import ConfigError, InputError
from engine.core.settings import KDSettings, LossSettings, configure_losses
from engine.losses import (
    balanced_l1,
    class_balance_weights,
    detection_box_loss,
    detection_cls_loss,
    feature_mse,
    focal_elementwise,
    pdf_distil,
    pdf_location_weights,
    quality_focal_elementwise,
    segmentation_ce_loss,
    soft_detection_kd,
    soft_dice_loss,
    soft_segmentation_kd,
)

ALPHA, GAMMA_BL1, BETA = 0.5, 1.5, 0.11
B_BL1 = math.exp(GAMMA_BL1 / ALPHA) - 1.0  # α·ln(b + 1) = γ


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def focal_by_hand(z: float, t: float, alpha: float, gamma: float) -> float:
    """α_t·(1 − p_t)^γ·BCE for one logit z and (possibly soft) target t."""
    p = sig(z)
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - p_t) ** gamma * bce


def bl1_by_hand(x: float) -> float:
    """Balanced L1 (paper form scaled to β) of one difference."""
    x = abs(x)
    if x < BETA:
        return ALPHA / B_BL1 * (B_BL1 * x + BETA) * math.log(B_BL1 * x / BETA + 1) - ALPHA * x
    return GAMMA_BL1 * x + BETA * (GAMMA_BL1 / B_BL1 - ALPHA)


# ---------------------------------------------------------------- focal


def test_focal_gamma0_is_alpha_weighted_bce() -> None:
    loss = focal_elementwise(torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=0.0)
    p0, p1 = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))
    expected = [0.25 * -math.log(p0), 0.75 * -math.log(1 - p1)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_focal_gamma2_modulates_by_one_minus_pt_squared() -> None:
    loss = focal_elementwise(torch.tensor([0.5, -1.0]), torch.tensor([1.0, 0.0]), alpha=0.25, gamma=2.0)
    p0, p1 = 1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(1.0))
    expected = [0.25 * (1 - p0) ** 2 * -math.log(p0), 0.75 * p1**2 * -math.log(1 - p1)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_detection_cls_loss_normalised_by_positives_and_ignores_ignored() -> None:
    logits = [[[0.2, -0.4], [1.5, -2.0]], [[-0.3, 0.8], [3.0, 3.0]]]
    labels = torch.tensor([[0, -1], [1, -2]])  # 2 positives, 1 negative, 1 ignored
    loss = detection_cls_loss(torch.tensor(logits), labels, num_classes=2, alpha=0.25, gamma=2.0)
    f = focal_by_hand
    expected = (
        f(0.2, 1, 0.25, 2)
        + f(-0.4, 0, 0.25, 2)  # image 0, anchor 0: class 0
        + f(1.5, 0, 0.25, 2)
        + f(-2.0, 0, 0.25, 2)  # image 0, anchor 1: background
        + f(-0.3, 0, 0.25, 2)
        + f(0.8, 1, 0.25, 2)  # image 1, anchor 0: class 1
    ) / 2  # image 1, anchor 1 ignored; divided by the 2 positives of the batch
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    changed = torch.tensor(logits)
    changed[1, 1] = torch.tensor([-9.0, 9.0])  # the ignored anchor
    assert detection_cls_loss(changed, labels, 2, 0.25, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_detection_cls_loss_zero_positives_is_finite_and_meaningful() -> None:
    logits = torch.tensor([[[0.0, 1.0]]], requires_grad=True)
    loss = detection_cls_loss(logits, torch.tensor([[-1]]), num_classes=2, alpha=0.25, gamma=1.0)
    expected = focal_by_hand(0.0, 0, 0.25, 1.0) + focal_by_hand(1.0, 0, 0.25, 1.0)  # divided by max(0, 1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad > 0).all()  # pushes both logits down
    ignored = detection_cls_loss(logits, torch.tensor([[-2]]), num_classes=2)
    assert ignored.item() == 0.0


def test_detection_cls_loss_rejects_bad_shapes_and_params() -> None:
    with pytest.raises(InputError, match="cls_logits"):
        detection_cls_loss(torch.zeros(1, 3, 2), torch.zeros(1, 3, dtype=torch.long), num_classes=3)
    with pytest.raises(ConfigError, match="alpha"):
        focal_elementwise(torch.zeros(2), torch.zeros(2), alpha=1.5)


# ---------------------------------------------------------------- balanced L1


def test_balanced_l1_values_below_and_above_beta() -> None:
    b = math.exp(1.5 / 0.5) - 1  # = e³ − 1
    below = 0.5 / b * (b * 0.05 + 0.11) * math.log(b * 0.05 / 0.11 + 1) - 0.5 * 0.05
    above = 1.5 * 0.3 + 0.11 * (1.5 / b - 0.5)
    loss = balanced_l1(torch.tensor([0.05, -0.3, 0.0]), torch.zeros(3))
    assert loss.tolist() == pytest.approx([below, above, 0.0], rel=1e-6, abs=1e-9)


def test_balanced_l1_continuous_in_value_and_gradient_at_beta() -> None:
    eps = 1e-4
    x = torch.tensor([BETA - eps, BETA + eps, 0.05, 0.0], dtype=torch.float64, requires_grad=True)
    loss = balanced_l1(x, torch.zeros(4, dtype=torch.float64))
    assert abs(loss[0].item() - loss[1].item()) < 2 * 1.5 * eps  # only the slope's worth of change
    loss.sum().backward()
    grad = x.grad.tolist()
    assert grad[0] == pytest.approx(1.5, abs=1e-3) and grad[1] == pytest.approx(1.5, abs=1e-9)  # γ on both sides
    assert grad[2] == pytest.approx(0.5 * math.log(B_BL1 * 0.05 / BETA + 1), rel=1e-6)  # paper: α·ln(b|x|/β + 1)
    assert grad[3] == 0.0  # the paper's gradient vanishes at 0


def test_balanced_l1_mmdet_form_and_forms_agree_at_beta_1() -> None:
    b = math.exp(3.0) - 1
    mmdet_below = 0.5 / b * (b * 0.05 + 1) * math.log(b * 0.05 / 0.11 + 1) - 0.5 * 0.05
    mmdet_above = 1.5 * 0.3 + 1.5 / b - 0.5 * 0.11
    got = balanced_l1(torch.tensor([0.05, 0.3]), torch.zeros(2), form="mmdet")
    assert got.tolist() == pytest.approx([mmdet_below, mmdet_above], rel=1e-6)
    x = torch.tensor([0.2, 0.7, 1.4])
    paper = balanced_l1(x, torch.zeros(3), beta=1.0)
    assert torch.allclose(paper, balanced_l1(x, torch.zeros(3), beta=1.0, form="mmdet"))
    with pytest.raises(ConfigError, match="form"):
        balanced_l1(x, x, form="smooth")  # type: ignore[arg-type]


def test_detection_box_loss_mean_over_positive_anchors() -> None:
    deltas = torch.tensor([[[0.05, -0.3, 0.0, 0.2], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    targets = torch.zeros(1, 3, 4)
    targets[0, 1] = float("inf")  # garbage target at a negative anchor must not matter
    targets[0, 2] = 5.0  # ignored anchor
    loss = detection_box_loss(deltas, targets, torch.tensor([[2, -1, -2]]))
    expected = (bl1_by_hand(0.05) + bl1_by_hand(0.3) + 0.0 + bl1_by_hand(0.2)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(deltas.grad).all() and (deltas.grad[0, 1:] == 0).all()
    # the config's parameters (LossSettings.box_loss) reach the loss; β = 1: the paper's unscaled form
    wide = detection_box_loss(deltas.detach(), targets, torch.tensor([[2, -1, -2]]), {"beta": 1.0})
    by_hand = [ALPHA / B_BL1 * (B_BL1 * x + 1) * math.log(B_BL1 * x + 1) - ALPHA * x for x in (0.05, 0.3, 0.2)]
    assert wide.item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)


def test_detection_box_loss_no_positives_is_zero_without_nan() -> None:
    deltas = torch.randn(2, 5, 4, requires_grad=True)
    loss = detection_box_loss(deltas, torch.full((2, 5, 4), float("nan")), torch.full((2, 5), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert (deltas.grad == 0).all()


# ---------------------------------------------------------------- segmentation CE


def test_segmentation_ce_with_ignore() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    mask = torch.tensor([[[0, 1, 255]]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert segmentation_ce_loss(logits, mask).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss_fn", [segmentation_ce_loss, soft_dice_loss])
def test_all_ignored_pixels_give_zero_loss_and_gradient(loss_fn) -> None:
    logits = torch.randn(2, 6, 4, 4, requires_grad=True)
    loss = loss_fn(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


def test_segmentation_ce_refuses_a_mask_of_another_size() -> None:
    with pytest.raises(InputError, match="mask"):
        segmentation_ce_loss(torch.randn(2, 6, 4, 4), torch.zeros(2, 8, 8, dtype=torch.long))


def test_segmentation_ce_class_weights_by_hand() -> None:
    logits = torch.zeros(1, 2, 1, 3)  # every labelled pixel costs ln 2
    mask = torch.tensor([[[0, 1, 255]]])
    weighted = segmentation_ce_loss(logits, mask, class_weights=torch.tensor([1.0, 3.0]))
    # (1·ln2 + 3·ln2) over the 2 labelled pixels (the pixel count, not the weight sum)
    assert weighted.item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_class_balance_weights_by_hand() -> None:
    # shares .6 .3 .1 0 → share^-0.5 = 1.29099, 1.82574, 3.16228 (absent class: the rarest present's), scaled by
    # the pixel mean .6·1.29099 + .3·1.82574 + .1·3.16228 = 1.638548
    weights = class_balance_weights([600, 300, 100, 0], 0.5)
    assert weights == pytest.approx([0.78789, 1.11424, 1.92993, 1.92993], rel=1e-4)
    # power 1: 1/.999 and 1/.001 → capped at 10× the smallest, pixel mean .999·1.001 + .001·10.01 = 1.01001
    assert class_balance_weights([999, 1], 1.0) == pytest.approx([0.99108, 9.9108], rel=1e-4)
    assert class_balance_weights([5, 7], 0.0) == pytest.approx([1.0, 1.0])
    with pytest.raises(InputError, match="labelled pixels"):
        class_balance_weights([0, 0], 0.5)


def test_soft_dice_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]], [[-9.0, -9.0, 9.0]]]])  # (1, 3, 1, 3)
    mask = torch.tensor([[[0, 1, 255]]])  # class 2 absent from the labels: not averaged
    p = torch.softmax(logits[0, :, 0, :2], dim=0)  # the two labelled pixels
    dice0 = (2 * p[0, 0] + 1) / (p[0].sum() + 1 + 1)
    dice1 = (2 * p[1, 1] + 1) / (p[1].sum() + 1 + 1)
    expected = 1 - (dice0 + dice1) / 2
    assert soft_dice_loss(logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_dice_of_a_confident_perfect_map_is_near_zero() -> None:
    mask = torch.randint(0, 6, (2, 8, 8))
    confident = 50.0 * torch.nn.functional.one_hot(mask, 6).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(confident, mask).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- soft detection KD


def test_soft_detection_kd_identical_teacher_and_student() -> None:
    z = [[[0.3, -1.2], [2.0, 0.0]]]
    s_cls = torch.tensor(z, requires_grad=True)
    t_cls = torch.tensor(z, requires_grad=True)
    box = [[[0.1, -0.2, 0.3, 0.0], [1.0, 0.5, -0.5, 2.0]]]
    s_box, t_box = torch.tensor(box, requires_grad=True), torch.tensor(box, requires_grad=True)
    out = soft_detection_kd(s_cls, s_box, t_cls, t_box, cls_weight=1.0, box_weight=1.0, alpha=0.25, gamma=2.0)
    assert out["soft_box"].item() == 0.0

    def self_focal(zz: float) -> float:  # focal of p against the soft target p itself
        p = 1 / (1 + math.exp(-zz))
        bce = -(p * math.log(p) + (1 - p) * math.log(1 - p))
        one_minus_pt = 1 - (p * p + (1 - p) * (1 - p))
        return (0.25 * p + 0.75 * (1 - p)) * one_minus_pt**2 * bce

    expected = (self_focal(0.3) + self_focal(-1.2) + self_focal(2.0) + self_focal(0.0)) / 4
    assert out["soft_cls"].item() == pytest.approx(expected, rel=1e-6)
    (out["soft_cls"] + out["soft_box"]).backward()
    assert t_cls.grad is None and t_box.grad is None  # teacher detached


def test_soft_detection_kd_weights_and_box_term() -> None:
    s_box = torch.zeros(1, 2, 4)
    t_box = torch.zeros(1, 2, 4)
    t_box[0, 0, 1] = 0.3
    cls = torch.zeros(1, 2, 1)
    out = soft_detection_kd(cls, s_box, cls, t_box, cls_weight=10.0, box_weight=2.0, alpha=0.25, gamma=0.0)
    assert out["soft_box"].item() == pytest.approx(2.0 * bl1_by_hand(0.3) / 8, rel=1e-6)
    # z = 0 against target 0.5, γ = 0: α_t = 0.5, BCE = ln 2, same on both elements
    assert out["soft_cls"].item() == pytest.approx(10.0 * 0.5 * math.log(2), rel=1e-6)


# ---------------------------------------------------------------- soft segmentation KD


def test_soft_segmentation_kd_identical_is_zero() -> None:
    logits = torch.randn(2, 6, 5, 7)
    assert abs(soft_segmentation_kd(logits, logits.clone(), temperature=3.0).item()) < 1e-6


def test_soft_segmentation_kd_hand_case_with_temperature_and_ignore() -> None:
    s = torch.tensor([[[[1.0, 4.0]], [[0.0, -4.0]]]], requires_grad=True)  # (1, 2, 1, 2); pixel 1 ignored
    t = torch.tensor([[[[0.0, -3.0]], [[2.0, 3.0]]]])
    ignore = torch.tensor([[[False, True]]])
    # T = 2: teacher softmax([0, 1]), student softmax([0.5, 0])
    pt0, pt1 = 1 / (1 + math.e), math.e / (1 + math.e)
    ps0, ps1 = math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)
    expected = 4 * (pt0 * math.log(pt0 / ps0) + pt1 * math.log(pt1 / ps1))
    loss = soft_segmentation_kd(s, t, temperature=2.0, ignore_mask=ignore)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert (s.grad[..., 1] == 0).all() and (s.grad[..., 0] != 0).all()
    t2 = t.clone()
    t2[..., 1] = torch.tensor([[9.0], [-9.0]])  # change only the ignored pixel
    s2 = s.detach().clone()
    s2[..., 1] = 0.0
    assert soft_segmentation_kd(s2, t2, 2.0, ignore).item() == pytest.approx(expected, rel=1e-6)
    all_ignored = soft_segmentation_kd(s, t, 2.0, torch.ones(1, 1, 2, dtype=torch.bool))
    assert all_ignored.item() == 0.0


# ---------------------------------------------------------------- feature MSE


def test_feature_mse_hand_case_both_reductions() -> None:
    fs = [torch.tensor([[[[1.0, 2.0]]]], requires_grad=True), torch.tensor([[[[3.0]]]], requires_grad=True)]
    ft = [torch.zeros(1, 1, 1, 2, requires_grad=True), torch.ones(1, 1, 1, 1, requires_grad=True)]
    level_mean = feature_mse(fs, ft, weight=5.0, reduction="level_mean")
    assert level_mean.item() == pytest.approx(5 * ((1 + 4) / 2 + 4) / 2)
    assert feature_mse(fs, ft, weight=5.0, reduction="pooled").item() == pytest.approx(5 * (1 + 4 + 4) / 3)
    level_mean.backward()
    assert ft[0].grad is None and ft[1].grad is None
    assert fs[0].grad.flatten().tolist() == pytest.approx([5 / 2 * 2 * 1 / 2, 5 / 2 * 2 * 2 / 2])
    with pytest.raises(InputError, match="teacher_feats"):
        feature_mse(fs, ft[:1])


# ---------------------------------------------------------------- PDF-Distil


def _pdf_case() -> dict[str, torch.Tensor]:
    """2 locations × 2 anchors, 2 classes; student predicts 0.5 everywhere."""
    p_t = [[0.9, 0.5], [0.5, 0.5], [0.2, 0.6], [0.5, 0.5]]
    return {
        "t_cls": torch.tensor([[[logit(p) for p in row] for row in p_t]], dtype=torch.float64, requires_grad=True),
        "s_cls": torch.zeros(1, 4, 2, dtype=torch.float64, requires_grad=True),
        "fs": torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64, requires_grad=True),  # (1,2,1,2)
        "ft": torch.zeros(1, 2, 1, 2, dtype=torch.float64, requires_grad=True),
        "s_box": torch.tensor([[[0.1, 0.0, 0.0, 0.0]] * 4], dtype=torch.float64, requires_grad=True),
        "t_box": torch.tensor([[[0.0, 0.0, 0.0, -0.3]] * 4], dtype=torch.float64, requires_grad=True),
    }


def test_pdf_weights_hand_case() -> None:
    c = _pdf_case()
    (w,) = pdf_location_weights(c["s_cls"], c["t_cls"], [(1, 2)], anchors_per_loc=2)
    d = [math.sqrt(0.4**2), 0.0, math.sqrt(0.3**2 + 0.1**2), 0.0]  # sqrt(Σ_c (p_t − p_s)²) per anchor
    m = [(d[0] + d[1]) / 2, (d[2] + d[3]) / 2]  # mean over the 2 anchors of each location
    assert w.shape == (1, 1, 1, 2)
    assert w.flatten().tolist() == pytest.approx([m[0] / sum(m), m[1] / sum(m)], rel=1e-9)


def test_pdf_distil_hand_case_and_no_gradient_through_weights() -> None:
    c = _pdf_case()
    out = pdf_distil([c["fs"]], [c["ft"]], c["s_cls"], c["t_cls"], c["s_box"], c["t_box"], [(1, 2)], anchors_per_loc=2)
    m0, m1 = 0.4 / 2, math.sqrt(0.1) / 2
    w0, w1 = m0 / (m0 + m1), m1 / (m0 + m1)
    # location 0: channel diffs (1, 3) → mean square 5; location 1: (2, 0) → 2
    assert out["pdf_feat"].item() == pytest.approx(5 * (w0 * 5 + w1 * 2), rel=1e-9)
    # student logit 0 → BCE = ln 2 for every element; D sums to 0.16 + 0.09 + 0.01; 2 elements with p_t > 0.5
    assert out["pdf_cls"].item() == pytest.approx((0.16 + 0.09 + 0.01) * math.log(2) / 2, rel=1e-9)
    assert out["pdf_box"].item() == pytest.approx((0.1 + 0.3) * 4 / 16, rel=1e-9)

    out["pdf_feat"].backward(retain_graph=True)
    assert c["s_cls"].grad is None and c["t_cls"].grad is None  # the feature weights carry no gradient
    assert c["ft"].grad is None  # teacher features detached
    # ∂/∂f_s = weight · w · 2(f_s − f_t) / C
    expected = [[5 * w0 * 2 * 1 / 2, 5 * w1 * 2 * 2 / 2], [5 * w0 * 2 * 3 / 2, 0.0]]
    assert c["fs"].grad[0, :, 0].tolist() == [pytest.approx(row, rel=1e-9) for row in expected]

    out["pdf_cls"].backward()
    # D is a constant weight: ∂/∂z_s = D·(σ(z_s) − p_t) / count (a gradient through D would add a term)
    assert c["s_cls"].grad[0, 0, 0].item() == pytest.approx(0.16 * (0.5 - 0.9) / 2, rel=1e-9)
    assert c["s_cls"].grad[0, 2, 1].item() == pytest.approx(0.01 * (0.5 - 0.6) / 2, rel=1e-9)
    assert c["t_cls"].grad is None


def test_pdf_distil_identical_is_zero_and_weights_sum_to_one_over_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    a = sum(h * w for h, w in shapes) * 6
    cls = torch.randn(2, a, 3, generator=gen)
    box = torch.randn(2, a, 4, generator=gen)
    feats = [torch.randn(2, 8, h, w, generator=gen) for h, w in shapes]
    out = pdf_distil(feats, [f.clone() for f in feats], cls, cls.clone(), box, box.clone(), shapes)
    assert all(v.item() == 0.0 for v in out.values())
    weights = pdf_location_weights(cls, torch.randn(2, a, 3, generator=gen), shapes)
    assert [tuple(w.shape) for w in weights] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    assert sum(w.sum().item() for w in weights) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(InputError, match="level_shapes"):
        pdf_distil(feats, feats, cls, cls, box, box, [(4, 4), (2, 1)])
    with pytest.raises(InputError, match="anchors"):
        pdf_location_weights(cls, cls, shapes, anchors_per_loc=5)


# ---------------------------------------------------------------- config, bf16


def test_settings_validate_and_are_the_config_defaults() -> None:
    from engine.train.config import DEFAULTS, load_config

    assert KDSettings().feature_weight == 5.0 and KDSettings().unlabelled.det_weight == 1.0
    with pytest.raises(ConfigError, match=r"kd\.pdf_cls_weight"):
        KDSettings(pdf_cls_weight=-1.0)
    with pytest.raises(ConfigError, match=r"kd\.temperature"):
        KDSettings(temperature=0.0)
    with pytest.raises(ConfigError, match=r"kd\.soft_det_form.*quality_focal"):
        load_config(None, ["data.det=x", "data.seg=y", "kd.soft_det_form=qfl"])
    with pytest.raises(ConfigError, match=r"kd\.unlabelled\.seg_weight"):
        load_config(None, ["data.det=x", "data.seg=y", "kd.unlabelled.seg_weight=-1"])
    # one source of truth: the config defaults ARE the dataclasses' defaults, and so are the loss functions'
    built = configure_losses(load_config(None, ["data.det=x", "data.seg=y"]))
    assert built.kd == KDSettings() and built.loss == LossSettings()
    assert DEFAULTS["kd"]["soft_focal_gamma"] == KDSettings().soft_focal_gamma == 1.0
    s_cls, t_cls = torch.tensor([[[0.4]]]), torch.tensor([[[-0.7]]])
    box = torch.zeros(1, 1, 4)
    by_default = soft_detection_kd(s_cls, box, t_cls, box)["soft_cls"]
    explicit = 5000.0 * focal_by_hand(0.4, sig(-0.7), 0.25, 1.0)
    assert by_default.item() == pytest.approx(explicit, rel=1e-6)


def _soft_cls_gradient(p: float, teacher: float, form: str, gamma: float) -> float:
    """d soft_cls / d student logit at student probability ``p``, one element."""
    z = torch.tensor([[[logit(p)]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[logit(teacher)]]], dtype=torch.float64)
    box = torch.zeros(1, 1, 4, dtype=torch.float64)
    loss = soft_detection_kd(z, box, t, box, cls_weight=1.0, box_weight=0.0, alpha=0.25, gamma=gamma, form=form)
    loss["soft_cls"].backward()
    return float(z.grad)


def test_focal_soft_target_optimum_lies_below_the_teacher() -> None:
    """focal against σ(t) = 0.3 with γ = 1: the gradient is zero near p = 0.19, not at 0.3 (issue 9)."""
    grid = torch.linspace(0.01, 0.99, 9801, dtype=torch.float64)
    z = torch.logit(grid)
    losses = focal_elementwise(z, torch.full_like(z, 0.3), alpha=0.25, gamma=1.0)
    optimum = float(grid[int(losses.argmin())])
    assert optimum == pytest.approx(0.19, abs=0.01)
    assert abs(_soft_cls_gradient(optimum, 0.3, "focal", 1.0)) < 1e-3
    assert _soft_cls_gradient(0.3, 0.3, "focal", 1.0) > 0.01  # at the teacher's probability it still pushes down

    # by hand: the derivative of α_t(0.3 + 0.4p)·BCE(p, 0.3) w.r.t. the logit changes sign between 0.18 and 0.20
    def by_hand(p: float) -> float:
        eps = 1e-6
        return (focal_by_hand(logit(p) + eps, 0.3, 0.25, 1.0) - focal_by_hand(logit(p) - eps, 0.3, 0.25, 1.0)) / 2e-6

    assert by_hand(0.18) < 0 < by_hand(0.20)


@pytest.mark.parametrize("teacher", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_quality_focal_soft_target_optimum_is_the_teacher(teacher: float, gamma: float) -> None:
    assert abs(_soft_cls_gradient(teacher, teacher, "quality_focal", gamma)) < 1e-9
    assert _soft_cls_gradient(teacher - 0.02, teacher, "quality_focal", gamma) < 0
    assert _soft_cls_gradient(teacher + 0.02, teacher, "quality_focal", gamma) > 0
    grid = torch.linspace(0.005, 0.995, 19801, dtype=torch.float64)
    losses = quality_focal_elementwise(torch.logit(grid), torch.full_like(grid, teacher), alpha=0.25, gamma=gamma)
    assert float(grid[int(losses.argmin())]) == pytest.approx(teacher, abs=1e-3)
    # the value by hand: α_t·|t − p|^γ·BCE
    p, alpha_t = 0.6, 0.25 * teacher + 0.75 * (1 - teacher)
    bce = -(teacher * math.log(p) + (1 - teacher) * math.log(1 - p))
    got = quality_focal_elementwise(torch.tensor([logit(p)]), torch.tensor([teacher]), alpha=0.25, gamma=gamma)
    assert got.item() == pytest.approx(alpha_t * abs(teacher - p) ** gamma * bce, rel=1e-5)


def test_all_losses_finite_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(1)
    shapes = [(4, 4), (2, 2)]
    a = sum(h * w for h, w in shapes) * 6
    bsz, k, ch = 2, 3, 8
    n_det = a * (k + 4)
    proj = torch.nn.Linear(4, n_det + ch * 20 + 6 * 64, bias=False)
    torch.nn.init.normal_(proj.weight, std=20.0)  # large logits: saturated sigmoids / softmaxes
    x = torch.randn(2 * bsz, 4, generator=gen)
    labels = torch.randint(-2, k, (bsz, a), generator=gen)
    mask = torch.randint(0, 6, (bsz, 8, 8), generator=gen)
    mask[0] = 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = proj(x)  # bf16 under autocast
        assert y.dtype == torch.bfloat16
        s, t = y[:bsz], y[bsz:]

        def split(v: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cls = v[:, : a * k].reshape(bsz, a, k)
            box = v[:, a * k : n_det].reshape(bsz, a, 4) / 20
            off = n_det
            feats = []
            for h, w in shapes:
                feats.append(v[:, off : off + ch * h * w].reshape(bsz, ch, h, w))
                off += ch * h * w
            return cls, box, feats, v[:, off:].reshape(bsz, 6, 8, 8)

        s_cls, s_box, s_feats, s_seg = split(s)
        t_cls, t_box, t_feats, t_seg = split(t)
        losses = [
            detection_cls_loss(s_cls, labels, k),
            detection_box_loss(s_box, t_box, labels),
            segmentation_ce_loss(s_seg, mask),
            *soft_detection_kd(s_cls, s_box, t_cls, t_box).values(),
            soft_segmentation_kd(s_seg, t_seg, 2.0, mask == 255),
            feature_mse(s_feats, t_feats),
            *pdf_distil(s_feats, t_feats, s_cls, t_cls, s_box, t_box, shapes).values(),
        ]
    for loss in losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.stack(losses).sum().backward()
    assert torch.isfinite(proj.weight.grad).all() and proj.weight.grad.abs().sum() > 0
