"""engine.models: shapes at odd sizes, anchor layout, box coder, assignment, 4-band input, bf16, NMS, export."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from engine.core.errors import ConfigError
from engine.models import (
    IGNORE,
    NEGATIVE,
    AnchorGenerator,
    FeatureAdapters,
    ModelConfig,
    assign,
    build_model,
    count_parameters,
    decode,
    encode,
    load_model_config,
    parameter_counts,
    postprocess_detections,
)
from engine.models.backbone import ResNetTrunk, adapt_first_conv, imagenet_checkpoint_path
from engine.models.heads import _flatten

ROOT = Path(__file__).resolve().parents[1]
R2 = math.sqrt(2.0)


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_model_config(ROOT / "models" / "student.yaml")).eval()


def _anchor_count(h: int, w: int) -> int:
    return 6 * sum(math.ceil(h / s) * math.ceil(w / s) for s in (8, 16, 32, 64))


# ---------------------------------------------------------------- config


def test_yaml_configs_load() -> None:
    s = load_model_config(ROOT / "models" / "student.yaml")
    t_det = load_model_config(ROOT / "models" / "teacher_det.yaml")
    t_seg = load_model_config(ROOT / "models" / "teacher_seg.yaml")
    assert (s.backbone, s.neck, s.tasks, s.num_anchors) == ("resnet18", "fpn", ("det", "seg"), 6)
    assert (t_det.backbone, t_det.neck, t_det.tasks) == ("resnet50", "pafpn", ("det",))
    assert (t_seg.backbone, t_seg.neck, t_seg.tasks) == ("resnet50", "pafpn", ("seg",))
    assert s.anchor_scales == pytest.approx((1.0, R2)) and s.pretrained is None
    assert load_model_config(s.to_dict()) == s


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"backbone": "resnet34"}, ["'backbone'", "resnet18", "'resnet34'"]),
        ({"neck": "bifpn"}, ["'neck'", "pafpn", "'bifpn'"]),
        ({"tasks": ["det", "depth"]}, ["'tasks'", "'depth'"]),
        ({"tasks": []}, ["'tasks'", "non-empty"]),
        ({"in_channels": 0}, ["'in_channels'", ">= 1", "0"]),
        ({"channels": "256"}, ["'channels'", "'256'"]),
        ({"box_variances": [0.1]}, ["'box_variances'", "2 positive"]),
        ({"head_shared": "yes"}, ["'head_shared'", "true or false"]),
        ({"pretrained": 3}, ["'pretrained'", "imagenet"]),
        ({"backbon": "resnet18"}, ["backbon", "expected keys"]),
    ],
)
def test_config_errors_name_key_expected_found(data: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_model_config(data)
    for word in words:
        assert word in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing there"):
        load_model_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_model_config(bad)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(("batch", "h", "w"), [(2, 64, 64), (1, 96, 80), (1, 321, 257)])
def test_student_output_shapes(student: torch.nn.Module, batch: int, h: int, w: int) -> None:
    with torch.no_grad():
        out = student(torch.randn(batch, 3, h, w))
    assert set(out) == {"features", "cls_logits", "box_deltas", "seg_logits"}
    assert [tuple(f.shape) for f in out["features"]] == [
        (batch, 256, math.ceil(h / s), math.ceil(w / s)) for s in (8, 16, 32, 64)
    ]
    n = _anchor_count(h, w)
    assert out["cls_logits"].shape == (batch, n, 3)
    assert out["box_deltas"].shape == (batch, n, 4)
    assert out["seg_logits"].shape == (batch, 6, h, w)
    assert student.anchors_for((h, w)).shape == (n, 4)
    assert torch.equal(student.anchors_for((h, w)), student.anchor_generator.for_features(out["features"]))


def test_teacher_single_task_shapes() -> None:
    x = torch.randn(1, 3, 64, 64)
    det = build_model(load_model_config(ROOT / "models" / "teacher_det.yaml")).eval()
    with torch.no_grad():
        out = det(x)
    assert set(out) == {"features", "cls_logits", "box_deltas"}
    assert out["cls_logits"].shape == (1, 510, 3) and out["features"][3].shape == (1, 256, 1, 1)
    seg_cfg = load_model_config(ROOT / "models" / "teacher_seg.yaml").to_dict()
    seg = build_model({**seg_cfg, "seg_full_res_refine": True}).eval()
    with torch.no_grad():
        out = seg(torch.randn(1, 3, 72, 56))
    assert set(out) == {"features", "seg_logits"} and out["seg_logits"].shape == (1, 6, 72, 56)


def test_per_level_heads_option() -> None:
    shared = build_model(ModelConfig(tasks=("det",)))
    per_level = build_model(ModelConfig(tasks=("det",), head_shared=False))
    # shared: convs + predictors once, BN per level; per level: everything 4 times
    assert count_parameters(per_level.det_head) > 3 * count_parameters(shared.det_head)
    with torch.no_grad():
        out = per_level.eval()(torch.randn(1, 3, 64, 48))
    assert out["cls_logits"].shape == (1, _anchor_count(64, 48), 3)


def test_cls_bias_prior(student: torch.nn.Module) -> None:
    bias = student.det_head.cls_tower.predictors[0].bias
    assert torch.allclose(bias, torch.full_like(bias, -math.log(99.0)))
    with torch.no_grad():
        p = torch.sigmoid(student(torch.randn(1, 3, 64, 64))["cls_logits"])
    assert abs(float(p.mean()) - 0.01) < 0.005


# ---------------------------------------------------------------- anchors


def test_anchor_layout_level0_by_hand() -> None:
    gen = AnchorGenerator()
    a = gen.for_image((64, 48))  # level sizes 8x6, 4x3, 2x2, 1x1
    assert a.shape == (6 * (48 + 12 + 4 + 1), 4)
    s, c = 24.0, 4.0  # level 0 base size; first centre (0.5 * 8)
    expected = [
        [c - s / 2, c - s / 2, c + s / 2, c + s / 2],  # (s, s)
        [c - s * R2 / 2, c - s / R2 / 2, c + s * R2 / 2, c + s / R2 / 2],  # (s√2, s/√2): wide
        [c - s / R2 / 2, c - s * R2 / 2, c + s / R2 / 2, c + s * R2 / 2],  # (s/√2, s√2): tall
        [c - s * R2 / 2, c - s * R2 / 2, c + s * R2 / 2, c + s * R2 / 2],  # (s√2, s√2)
        [c - s, c - s / 2, c + s, c + s / 2],  # (2s, s)
        [c - s / 2, c - s, c + s / 2, c + s],  # (s, 2s)
    ]
    assert torch.allclose(a[:6], torch.tensor(expected), atol=1e-5)
    # next location in the row: x + 1 (centre 12, 4); first of the second row: y + 1 (centre 4, 12); W0 = 6
    assert torch.allclose(a[6], torch.tensor([0.0, -8.0, 24.0, 16.0]))
    assert torch.allclose(a[6 * 6], torch.tensor([-8.0, 0.0, 16.0, 24.0]))
    # level 1 starts after 8*6*6 rows: centre (8, 8), size 48
    assert torch.allclose(a[6 * 48], torch.tensor([-16.0, -16.0, 32.0, 32.0]))


def test_head_flatten_matches_anchor_order() -> None:
    h, w, n_anchor, n = 3, 2, 6, 4
    x = torch.zeros(1, n_anchor * n, h, w)
    for y in range(h):
        for xx in range(w):
            for a in range(n_anchor):
                x[0, a * n : (a + 1) * n, y, xx] = 100 * y + 10 * xx + a
    flat = _flatten(x, n)
    for y in range(h):
        for xx in range(w):
            for a in range(n_anchor):
                assert torch.all(flat[0, (y * w + xx) * n_anchor + a] == 100 * y + 10 * xx + a)


# ---------------------------------------------------------------- box coder


def test_encode_decode_round_trip_batched() -> None:
    anchors = AnchorGenerator().for_image((64, 64))  # (510, 4)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2, anchors.shape[0], 2, generator=g) * 60
    wh = torch.rand(2, anchors.shape[0], 2, generator=g) * 90 + 2
    boxes = torch.cat([xy, xy + wh], dim=-1)
    deltas = encode(boxes, anchors)
    assert deltas.shape == (2, 510, 4)
    assert torch.allclose(decode(deltas, anchors), boxes, atol=1e-3)


def test_encode_by_hand() -> None:
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    box = torch.tensor([[1.0, 4.0, 11.0, 24.0]])  # centre (6, 14), w 10, h 20
    assert torch.allclose(encode(box, anchor), torch.tensor([[1.0 / (10 * 0.1), 4.0 / (20 * 0.1), 0.0, 0.0]]))
    wide = torch.tensor([[-5.0, 0.0, 15.0, 20.0]])  # w doubled
    assert torch.allclose(encode(wide, anchor), torch.tensor([[0.0, 0.0, math.log(2.0) / 0.2, 0.0]]))
    assert torch.isfinite(encode(torch.zeros(1, 4), anchor)).all()  # padding box: finite target


# ---------------------------------------------------------------- assignment


def test_assignment_hand_placed() -> None:
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # 0: equals GT a (IoU 1)
            [20.0, 0.0, 30.0, 10.0],  # 1: equals GT b
            [20.0, 0.0, 30.0, 5.0],  # 2: IoU 0.5 with b → positive
            [20.0, 0.0, 30.0, 4.5],  # 3: IoU 0.45 → ignored
            [20.0, 0.0, 30.0, 3.9],  # 4: IoU 0.39 → negative
            [40.0, 40.0, 60.0, 60.0],  # 5: IoU 0.25 with GT c, its best anchor → forced positive
            [0.0, 20.0, 10.0, 30.0],  # 6: equals a padding box → must stay negative
        ]
    )
    gt_boxes = torch.tensor(
        [
            [[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 40.0, 50.0, 50.0], [0.0, 20.0, 10.0, 30.0]],
            [[0.0, 20.0, 10.0, 30.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    gt_labels = torch.tensor([[2, 1, 0, -1], [0, -1, -1, -1]])
    labels, matched = assign(anchors, gt_boxes, gt_labels)
    assert labels.dtype == torch.long and labels.shape == (2, 7) and matched.shape == (2, 7, 4)
    assert labels[0].tolist() == [2, 1, 1, IGNORE, NEGATIVE, 0, NEGATIVE]
    assert torch.equal(matched[0, 0], gt_boxes[0, 0])
    assert torch.equal(matched[0, 2], gt_boxes[0, 1])
    assert torch.equal(matched[0, 5], gt_boxes[0, 2])
    # image 1 is independent: only its real GT (= anchor 6) is positive
    assert labels[1].tolist() == [NEGATIVE] * 6 + [0]
    assert torch.equal(matched[1, 6], gt_boxes[1, 0])


def test_assignment_no_boxes_and_far_box() -> None:
    anchors = AnchorGenerator().for_image((64, 64))
    labels, matched = assign(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long))
    assert labels.shape == (2, 510) and bool((labels == NEGATIVE).all()) and matched.shape == (2, 510, 4)
    far = torch.tensor([[[500.0, 500.0, 510.0, 510.0]]])  # overlaps no anchor at all: nothing to force
    labels, _ = assign(anchors, far, torch.tensor([[1]]))
    assert bool((labels == NEGATIVE).all())


def test_assignment_every_gt_gets_an_anchor() -> None:
    anchors = AnchorGenerator().for_image((96, 96))
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(3, 5, 2, generator=g) * 80
    wh = torch.rand(3, 5, 2, generator=g) * 12 + 2  # small boxes: mostly below 0.5 IoU with every anchor
    boxes = torch.cat([xy, xy + wh], dim=-1)
    gt_labels = torch.randint(0, 3, (3, 5), generator=g)
    labels, matched = assign(anchors, boxes, gt_labels)
    iou = torchvision.ops.box_iou(boxes.reshape(-1, 4), anchors).reshape(3, 5, -1)
    for b in range(3):
        for k in range(5):
            best = int(iou[b, k].argmax())
            assert labels[b, best] >= 0
            assert torch.equal(matched[b, best], boxes[b, k]) or iou[b, :, best].max() >= 0.5


# ---------------------------------------------------------------- bands and weights


def test_four_band_input_and_first_conv_adaptation() -> None:
    conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)
    new = adapt_first_conv(conv, 4)
    assert new.weight.shape == (8, 4, 7, 7) and new.stride == (2, 2)
    assert torch.equal(new.weight[:, :3], conv.weight)
    assert torch.allclose(new.weight[:, 3], conv.weight.mean(dim=1))
    net = build_model(ModelConfig(in_channels=4)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 64, 64))
    assert out["seg_logits"].shape == (1, 6, 64, 64) and out["cls_logits"].shape == (1, 510, 3)


def test_local_pretrained_state_dict(tmp_path: Path) -> None:
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    trunk = ResNetTrunk("resnet18", in_channels=4, pretrained=str(path))
    assert torch.equal(trunk.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert torch.equal(trunk.conv1.weight[:, :3], ref.conv1.weight)
    assert torch.allclose(trunk.conv1.weight[:, 3], ref.conv1.weight.mean(dim=1))
    with pytest.raises(ConfigError, match="no file"):
        ResNetTrunk("resnet18", pretrained=str(tmp_path / "none.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(ConfigError, match="missing keys"):
        ResNetTrunk("resnet18", pretrained=str(wrong))


def test_imagenet_from_hub_cache_and_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = imagenet_checkpoint_path("resnet18")
    assert target == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a checkpoint")  # a truncated download: must fail with a message naming the path
    with pytest.raises(ConfigError) as err:
        ResNetTrunk("resnet18", pretrained="imagenet")
    assert str(target) in str(err.value) and "download.pytorch.org" in str(err.value)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), target)  # what a user places there offline
    trunk = ResNetTrunk("resnet18", pretrained="imagenet")
    assert torch.equal(trunk.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


# ---------------------------------------------------------------- precision, layout, export


def test_channels_last_bf16_autocast_finite() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig()).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 72, 56).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)  # training mode: batch statistics
        loss = out["cls_logits"].float().mean() + out["seg_logits"].float().mean() + out["box_deltas"].float().mean()
    loss.backward()
    assert out["seg_logits"].shape == (2, 6, 72, 56)
    assert out["cls_logits"].dtype == torch.bfloat16  # autocast really ran the convs in bf16
    assert out["features"][0].is_contiguous(memory_format=torch.channels_last)
    for key in ("cls_logits", "box_deltas", "seg_logits"):
        assert torch.isfinite(out[key].float()).all(), key
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_onnx_export_dynamic_size(student: torch.nn.Module, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")

    class Wrapped(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.net(x)
            anchors = self.net.anchor_generator.for_features(out["features"])
            return out["cls_logits"], out["box_deltas"], out["seg_logits"], anchors

    model = Wrapped(student).eval()
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            str(path),
            input_names=["images"],
            dynamo=False,
            opset_version=17,
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 100, 76)  # not a multiple of 64, not the traced size
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert got[0].shape == (1, _anchor_count(100, 76), 3) and got[2].shape == (1, 6, 100, 76)
    for g, r in zip(got, ref):
        assert float((torch.from_numpy(g) - r).abs().max()) < 1e-3


# ---------------------------------------------------------------- post-processing, adapters, sizes


def test_postprocess_nms_removes_duplicate() -> None:
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0], [50.0, 50, 70, 70]])
    logit = torch.logit(torch.tensor(0.9))
    cls = torch.full((1, 4, 3), -10.0)
    cls[0, 0, 1] = logit  # anchor 0, class 1
    cls[0, 1, 1] = logit - 1  # duplicate box, same class, lower score → suppressed
    cls[0, 2, 2] = logit  # overlapping box but another class → kept
    cls[0, 3, 0] = torch.logit(torch.tensor(0.04))  # below the 0.05 threshold → dropped
    deltas = torch.zeros(1, 4, 4)
    (det,) = postprocess_detections(cls, deltas, anchors, image_hw=(64, 64))
    assert det["labels"].tolist() == [1, 2]
    assert torch.allclose(det["scores"], torch.tensor([0.9, 0.9]))
    assert torch.allclose(det["boxes"], anchors[[0, 2]])
    (top1,) = postprocess_detections(cls, deltas, anchors, max_detections=1)
    assert top1["boxes"].shape == (1, 4)
    (clipped,) = postprocess_detections(cls, deltas, anchors + 60, image_hw=(64, 64))
    assert float(clipped["boxes"].max()) <= 64.0


def test_feature_adapters() -> None:
    feats = [torch.randn(2, 256, s, s) for s in (8, 4, 2, 1)]
    for k in (3, 1):
        out = FeatureAdapters(256, 512, kernel_size=k)(feats)
        assert [tuple(o.shape) for o in out] == [(2, 512, s, s) for s in (8, 4, 2, 1)]
    assert FeatureAdapters(kernel_size=3).convs[0].kernel_size == (3, 3)
    with pytest.raises(ConfigError, match="kernel_size"):
        FeatureAdapters(kernel_size=5)


def test_parameter_counts_and_ratio() -> None:
    s = parameter_counts(build_model(load_model_config(ROOT / "models" / "student.yaml")))
    t = parameter_counts(build_model(load_model_config(ROOT / "models" / "teacher_det.yaml")))
    assert s["backbone"] == 11_176_512  # torchvision resnet18 without fc
    assert t["backbone"] == 23_508_032  # torchvision resnet50 without fc
    assert s["total"] == s["encoder"] + s["det_head"] + s["seg_head"]
    ratio_encoder = t["encoder"] / s["encoder"]
    ratio_whole = t["total"] / s["total"]
    print(f"\nstudent (r18+FPN, det+seg): {s}\nteacher (r50+PAFPN, det): {t}")
    print(f"teacher/student ratio: encoder {ratio_encoder:.2f}, whole nets {ratio_whole:.2f} (paper ≈ 1.6)")
    assert 1.5 < ratio_whole < ratio_encoder < 2.5
