"""The paper-table runner: presets validate, hold-out splits, table aggregation, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.core.errors import ConfigError, InputError
from engine.experiments.__main__ import load_preset, main
from engine.experiments.data import chip_geometry, holdout_splits
from engine.experiments.plan import RUNS, run_overrides, selected_runs
from engine.experiments.tables import build_table, table_markdown
from engine.train.config import load_config


@pytest.mark.parametrize("preset", ["demo", "cpu", "paper"])
def test_every_run_of_every_preset_gives_a_valid_training_config(preset):
    spec = load_preset(preset)
    teachers = {"det": "t_det.pt", "seg": "t_seg.pt"}
    models = spec.get("models") or {}
    for run in selected_runs(spec):
        cfg = load_config(None, run_overrides(run, spec, "chips/p: x", "chips/v #1", "runs/x", 3, teachers))
        assert cfg["model"] == models.get(run.name if run.teacher else "student", run.model)
        assert cfg["tasks"] == list(run.tasks)
        assert cfg["kd"]["soft"] == run.soft and cfg["kd"]["feature"] == run.feature
        assert cfg["runtime"]["seed"] == 3
        if "det" in run.tasks:
            assert cfg["data"]["det"] == "chips/p: x"  # paths with YAML-special characters survive
        if run.uses_kd:
            assert cfg["kd"]["det_teacher"] == "t_det.pt"


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"no preset file .*known presets: cpu, demo, paper"):
        load_preset("nope")


def test_selected_runs_add_the_teachers_distillation_needs():
    assert [r.name for r in selected_runs({"runs": ["single_det", "mtl"]})] == ["single_det", "mtl"]
    names = [r.name for r in selected_runs({"runs": ["mtl_soft_pdf"]})]
    assert names == ["teacher_det", "teacher_seg", "mtl_soft_pdf"]
    assert [r.name for r in selected_runs({})] == [r.name for r in RUNS]
    with pytest.raises(ConfigError, match=r"unknown run\(s\) \['mtl_typo'\]"):
        selected_runs({"runs": ["mtl_typo"]})


def test_students_as_teachers_replace_the_teacher_runs():
    preset = {"runs": ["mtl", "mtl_soft_pdf"], "kd_teachers": "students"}
    assert [r.name for r in selected_runs(preset)] == ["single_det", "single_seg", "mtl", "mtl_soft_pdf"]
    with pytest.raises(ConfigError, match=r"'kd_teachers': expected one of \['teachers', 'students'\], found 'mine'"):
        selected_runs({"runs": ["mtl_soft"], "kd_teachers": "mine"})


def test_holdout_moves_every_fifth_train_tile_to_val_and_standard_val_to_test():
    tiles = [SimpleNamespace(name=f"t{i}", split="train") for i in range(10)]
    tiles += [SimpleNamespace(name="v0", split="val")]
    splits = holdout_splits(tiles)
    assert [n for n, s in splits.items() if s == "val"] == ["t4", "t9"]
    assert splits["v0"] == "test" and splits["t0"] == "train"
    with pytest.raises(InputError, match="at least 2 training tiles"):
        holdout_splits([SimpleNamespace(name="a", split="train")])


def test_a_domain_can_have_its_own_chip_size_and_stride():
    chips = {"size": 128, "stride": 64, "potsdam": {"size": 192}}
    assert chip_geometry(chips, "potsdam") == (192, 64)
    assert chip_geometry(chips, "vaihingen") == (128, 64)
    with pytest.raises(InputError, match=r"'chips.potsdam': expected a mapping with size and/or stride"):
        chip_geometry({**chips, "potsdam": {"size": 192, "sise": 3}}, "potsdam")
    with pytest.raises(InputError, match=r"'chips.potsdam': expected positive integer size and stride"):
        chip_geometry({**chips, "potsdam": {"stride": 0}}, "potsdam")


def test_table_mean_and_sample_std_over_seeds():
    results = {
        "mtl": {
            0: {"det_map": 0.2, "det_ap50": 0.4, "seg_miou": 0.5, "seg_oa": 0.8},
            1: {"det_map": 0.4, "det_ap50": 0.6, "seg_miou": 0.7, "seg_oa": 0.9},
        }
    }
    table = {row["label"]: row for row in build_table(results)}
    mean, std = table["Partial MTL"]["det_map"]
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1414213, rel=1e-5)  # sqrt(((.1)²+(.1)²)/1)
    assert "+ soft" not in table  # rows without runs are left out
    text = table_markdown("p2v", list(table.values()), 2)
    assert "| Partial MTL | 30.0 ± 14.1 | 50.0 ± 14.1 | 60.0 ± 14.1 | 85.0 ± 7.1 |" in text


def test_rows_from_one_run_show_no_spread():
    results = {
        "teacher_det": {0: {"det_map": 0.5, "det_ap50": 0.7}},
        "teacher_seg": {0: {"seg_miou": 0.6, "seg_oa": 0.9}},
        "mtl": {s: {"det_map": 0.2, "det_ap50": 0.4, "seg_miou": 0.5, "seg_oa": 0.8} for s in range(3)},
    }
    text = table_markdown("p2v", build_table(results), 3)
    assert "| Teacher (R50-PAFPN) (1 run) | 50.0 | 70.0 | 60.0 | 90.0 |" in text
    assert "| Partial MTL | 20.0 ± 0.0 |" in text


def tiny_preset(folder: Path, **sections: Any) -> Path:
    """A preset of one training step per run on a few tiny synthetic tiles, with ``sections`` added."""
    preset = {
        "name": "tiny",
        "synthetic": {"vaihingen": {"tiles": 5, "tile_size_m": 12}, "potsdam": {"tiles": 5, "tile_size_m": 8}},
        "train": {"data.batch_size": 2, "data.num_workers": 0, "data.max_val_chips": 2, "optim.epochs": 1,
                  "optim.iters_per_epoch": 1, "optim.warmup_iters": 1},
        "teacher": {},
        **sections,
    }  # fmt: skip
    path = folder / "tiny.yaml"
    path.write_text(json.dumps(preset))
    return path


def test_tiny_preset_end_to_end(tmp_path):
    preset = tiny_preset(tmp_path, chips={"size": 64, "stride": 64, "potsdam_bands": "RGB", "gsd": 0.1})
    out = tmp_path / "exp"
    assert main(["--preset", str(preset), "--direction", "v2p", "--out", str(out), "--seeds", "2"]) == 0
    # teachers once per direction, shared by the seeds' students
    assert sorted(p.name for p in (out / "v2p").iterdir()) == ["seed0", "seed1", "teachers"]
    assert not (out / "v2p" / "seed1" / "teacher_det").exists()
    kd = json.loads((out / "v2p" / "seed1" / "mtl_soft_pdf" / "config.json").read_text())["kd"]
    assert kd["det_teacher"] == str(out / "v2p" / "teachers" / "teacher_det" / "best.pt")
    # chips at the working GSD: resampled tiles (labels by nearest neighbour: palette colours only)
    manifest = json.loads((out / "data" / "chips" / "potsdam" / "manifest.json").read_text())
    assert manifest["gsd"] == pytest.approx(0.1)
    info = json.loads((out / "run_info.json").read_text())
    assert info["command"].startswith("python -m engine.experiments --preset") and info["machine"]["cores"] >= 1
    assert info["runs_finished"] == 2 + 2 * 8 and info["train_and_test_seconds"] > 0
    tables = json.loads((out / "tables.json").read_text())
    rows = tables["tables"]["v2p"]
    assert [r["label"] for r in rows][:3] == ["Teacher (R50-PAFPN)", "Single task", "Partial MTL"]
    for row in rows:
        for key in ("det_map", "seg_miou"):
            assert row[key] is not None and 0.0 <= row[key][0] <= 1.0
    assert (out / "tables.md").read_text().startswith("### Detection on vaihingen, segmentation on potsdam")
    assert (out / "tables.png").stat().st_size > 1000
    # finished runs are reused: a second call trains nothing and gives the same table
    assert main(["--preset", str(preset), "--direction", "v2p", "--out", str(out), "--seeds", "2"]) == 0
    assert json.loads((out / "tables.json").read_text()) == tables
    # --report-only: tables from what finished (here: a third seed that never ran is simply absent)
    args = ["--preset", str(preset), "--direction", "v2p", "--out", str(out)]
    assert main([*args, "--seeds", "3", "--report-only"]) == 0
    assert json.loads((out / "tables.json").read_text())["tables"] == tables["tables"]
    assert not (out / "v2p" / "seed2").exists()


def test_each_seed_distils_from_its_own_single_task_students(tmp_path):
    """kd_teachers: students (the demo): no teacher runs; seed N's distilled run reads seed N's single-task bests,
    each fed its own inputs (the teacher's normalisation comes from its checkpoint)."""
    preset = tiny_preset(
        tmp_path,
        chips={"size": 64, "stride": 64, "potsdam_bands": "RGB", "gsd": 0.1},
        runs=["mtl_soft_pdf"],
        kd_teachers="students",
    )
    out = tmp_path / "exp"
    assert main(["--preset", str(preset), "--direction", "p2v", "--out", str(out), "--seeds", "2"]) == 0
    assert sorted(p.name for p in (out / "p2v").iterdir()) == ["seed0", "seed1"]
    for seed in (0, 1):
        kd = json.loads((out / "p2v" / f"seed{seed}" / "mtl_soft_pdf" / "config.json").read_text())["kd"]
        assert kd["det_teacher"] == str(out / "p2v" / f"seed{seed}" / "single_det" / "best.pt")
        assert kd["seg_teacher"] == str(out / "p2v" / f"seed{seed}" / "single_seg" / "best.pt")
    labels = [r["label"] for r in json.loads((out / "tables.json").read_text())["tables"]["p2v"]]
    assert labels == ["Single task", "+ soft + PDF"]


def test_prepared_chips_are_used_without_gdal(tmp_path, monkeypatch):
    """A GPU machine without GDAL trains from chip datasets prepared elsewhere."""
    import sys

    from engine.experiments.data import prepare_chips
    from tests.chipfixtures import write_chip_dataset

    for name in ("vaihingen", "potsdam"):
        write_chip_dataset(tmp_path / "data" / "chips" / name, {"train": 2, "val": 1, "test": 1})
    monkeypatch.setitem(sys.modules, "osgeo", None)  # any GDAL import now fails
    for module in [m for m in sys.modules if m.startswith(("engine.synth", "engine.chip", "engine.data.isprs"))]:
        monkeypatch.delitem(sys.modules, module)
    chips = prepare_chips(load_preset("paper"), tmp_path / "data", {"vaihingen": None, "potsdam": None})
    assert chips == {"vaihingen": tmp_path / "data/chips/vaihingen", "potsdam": tmp_path / "data/chips/potsdam"}
    assert not any(m.startswith("engine.synth") for m in sys.modules)


def test_unlabelled_target_experiment_tiny(tmp_path):
    """--unlabelled-target: teachers once, the student with and without the held-out town's imagery, one table."""
    target = {"variant": "mtl_soft", "synthetic": {"tiles": 3, "tile_size_m": 17}}
    preset = tiny_preset(tmp_path, chips={"size": 64, "stride": 64, "potsdam_bands": "RGB"}, target=target)
    out = tmp_path / "exp"
    args = ["--preset", str(preset), "--direction", "p2v", "--unlabelled-target", "suburb", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "unlabelled.json").read_text())
    rows = {row["row"]: row for row in result["tables"]["p2v"]}
    assert list(rows) == ["teachers", "student", "student_unlabelled"]
    for name in ("student", "student_unlabelled"):
        for key in ("target_seg_miou", "target_det_ap50", "source_seg_miou", "source_det_ap50"):
            assert 0.0 <= rows[name][key][0] <= 1.0
    with_target = json.loads((out / "p2v" / "seed0" / "mtl_soft_unlabelled" / "config.json").read_text())
    # the stream reads the town's RGBIR product: the RGB student, the IRRG segmentation teacher each take their bands
    assert with_target["data"]["unlabelled"] == str(out / "data" / "chips" / "suburb_RGBIR")
    assert {p.name for p in (out / "data" / "chips").glob("suburb_*")} == {"suburb_RGB", "suburb_IRRG", "suburb_RGBIR"}
    history = json.loads((out / "p2v" / "seed0" / "mtl_soft_unlabelled" / "history.json").read_text())
    assert any(k.startswith("loss_unlabelled_") for k in history[0])
    assert "unlabelled target: suburb" in (out / "unlabelled.md").read_text()
    manifest = json.loads((out / "data" / "chips" / "suburb_RGB" / "manifest.json").read_text())
    assert manifest["gsd"] == pytest.approx(0.13) and set(manifest["splits"]) == {"train", "val", "test"}
    # a sources-only student finished by a tables run (test_metrics.json, no "done", last.pt cleaned away) is reused
    shared = out / "p2v" / "seed0" / "mtl_soft"
    (shared / "done").unlink()
    (shared / "last.pt").unlink()
    (shared / "test_metrics.json").write_text("{}")
    trained_at = (shared / "best.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (shared / "best.pt").stat().st_mtime_ns == trained_at
