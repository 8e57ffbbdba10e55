"""The README's measured figures are rendered from committed JSON (scripts/render_readme.py) and stay equal to it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_readme", REPO / "scripts" / "render_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer()
RESULTS_CPU = Path("docs/results/cpu")
RESULTS_UNLABELLED = Path("docs/results/unlabelled")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the files the renderer reads and writes."""
    for rel in (*render.DOCS, Path("docs/results/bench.json"), Path("models/presets/demo.yaml")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, tmp_path / rel)
    for results in ("demo", "cpu", "unlabelled"):
        shutil.copytree(REPO / "docs/results" / results, tmp_path / "docs/results" / results)
    return tmp_path


@pytest.mark.parametrize("doc", [str(d) for d in render.DOCS])
def test_committed_figures_equal_their_json(doc: str) -> None:
    assert render.stale_blocks((REPO / doc).read_text(), REPO, doc) == []


def test_readme_is_short_and_holds_every_figure_block() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    names = {m.group("name") for m in render.BLOCK.finditer(text)}
    assert names == {"demo-run", "demo-quality", "bench", "region", "method"}


def test_a_figure_edited_by_hand_is_caught(tree: Path) -> None:
    readme = tree / "README.md"
    quality = json.loads((tree / "docs/results/demo/quality.json").read_text())
    shown = f"| {quality['students']['mtl']['headline']['vaihingen_seg_miou']:.3f} |"
    assert shown in readme.read_text()
    readme.write_text(readme.read_text().replace(shown, "| 0.999 |"))
    assert render.main(["--check", "--root", str(tree)]) == 1
    assert render.stale_blocks(readme.read_text(), tree) == ["demo-quality"]


def test_a_new_measurement_is_caught_then_rendered(tree: Path) -> None:
    bench_json = tree / "docs/results/bench.json"
    bench = json.loads(bench_json.read_text())
    bench["bench.bench_chip"]["ratio"] = 0.71
    bench_json.write_text(json.dumps(bench))
    assert render.stale_blocks((tree / "README.md").read_text(), tree) == ["bench"]
    assert render.main(["--root", str(tree)]) == 0
    assert "= **0.71** | ≥ 0.5 |" in (tree / "README.md").read_text()
    assert render.main(["--check", "--root", str(tree)]) == 0


def test_ratios_are_computed_from_the_measured_rates(tree: Path) -> None:
    # bf16 speed-up = 8.5 / 4.8 img/s = 1.77 (the README once said 2.0x next to these figures)
    assert "(fp32 → bf16: **1.77×**)" in render.render_bench(tree)
    # demo steps = optim.epochs × optim.iters_per_epoch of the preset: 5 × 90
    assert render.demo_steps(tree) == 450
    preset = tree / "models/presets/demo.yaml"
    preset.write_text(preset.read_text().replace("optim.epochs: 5", "optim.epochs: 6"))
    assert "of 540 steps each" in render.render_demo_run(tree)


def test_from_demo_copies_that_run_and_names_what_is_missing(tree: Path, tmp_path: Path) -> None:
    demo = tmp_path / "out_demo"
    demo.mkdir()
    with pytest.raises(SystemExit, match=r"out_demo'.*expected quality\.json, tables\.json, timings\.json"):
        render.main(["--from-demo", str(demo), "--root", str(tree)])
    quality = json.loads((tree / "docs/results/demo/quality.json").read_text())
    quality["students"]["mtl"]["headline"]["potsdam_car_ap50"] = 0.4
    quality["students"]["mtl_soft_pdf"]["headline"]["potsdam_car_ap50"] = 0.25
    (demo / "quality.json").write_text(json.dumps(quality))
    for name in ("tables.json", "timings.json"):
        shutil.copyfile(tree / "docs/results/demo" / name, demo / name)
    assert render.main(["--from-demo", str(demo), "--root", str(tree)]) == 0
    eight = json.loads((tree / "docs/results/demo/quality_8tiles.json").read_text())["headline"]["potsdam_car_ap50"]
    row = f"| Potsdam-like car AP50 | 0.400 | 0.250 | {eight:.3f} | ≥ 0.30 |"
    assert row in (tree / "README.md").read_text()


def test_an_unknown_block_is_named(tree: Path) -> None:
    with pytest.raises(SystemExit, match=r"'README\.md': unknown figure block 'speed'"):
        render.render_text("<!-- figures:speed -->\n<!-- /figures -->\n", tree)


def test_bench_results_keep_what_was_not_rerun() -> None:
    from bench.run_all import merge

    previous = {"bench.bench_synth": {"seconds": 8.5}, "bench.bench_chip": {"ratio": 0.63}}
    fresh = {"bench.bench_synth": {"seconds": 7.9}, "bench.bench_chip": {"error": 1}}
    assert merge(previous, fresh) == {"bench.bench_synth": {"seconds": 7.9}, "bench.bench_chip": {"ratio": 0.63}}


def test_records_the_benches_write_render(tree: Path) -> None:
    """The renderer reads the keys the benchmark modules write (tiny real runs of the fast ones)."""
    from bench import bench_chip, bench_labels, bench_synth

    tiny = ["--tiles", "1", "--width", "320", "--height", "256", "--size", "64", "--stride", "64", "--repeat", "1"]
    fresh = {
        "bench.bench_synth": bench_synth.run(workers=1, tiles=1, tile_px=160),
        "bench.bench_chip": bench_chip.main(tiny),
        "bench.bench_labels": bench_labels.main(tiny),
    }
    bench_json = tree / "docs/results/bench.json"
    bench_json.write_text(json.dumps({**json.loads(bench_json.read_text()), **fresh}))
    table = render.render_bench(tree)
    assert f"1 tiles × 160², {fresh['bench.bench_synth']['mpx']:.0f} Mpx" in table
    assert f"= **{fresh['bench.bench_chip']['ratio']:.2f}** | ≥ 0.5 |" in table
    assert f"**{fresh['bench.bench_labels']['ratio_vector_over_raster']:.2f}** (load average" in table


def test_method_table_renders_what_the_experiments_write(tmp_path: Path) -> None:
    """The tables and unlabelled-target writers of engine.experiments, fed by hand; means and spreads by hand."""
    from engine.experiments.tables import build_table, write_tables
    from engine.experiments.target import build_target_table, write_target_tables

    cpu, unlabelled = tmp_path / RESULTS_CPU, tmp_path / RESULTS_UNLABELLED
    cpu.mkdir(parents=True)
    unlabelled.mkdir(parents=True)
    teacher = {"det_ap50": 0.5, "det_map": 0.2, "seg_miou": 0.6, "seg_oa": 0.9}
    results = {
        "teacher_det": {0: teacher},
        "teacher_seg": {0: teacher},
        "single_det": {0: {"det_ap50": 0.20, "det_map": 0.1}, 1: {"det_ap50": 0.30, "det_map": 0.1}},
        "single_seg": {0: {"seg_miou": 0.40, "seg_oa": 0.8}, 1: {"seg_miou": 0.44, "seg_oa": 0.8}},
        "mtl": {0: {"det_ap50": 0.10, "seg_miou": 0.50}, 1: {"det_ap50": 0.20, "seg_miou": 0.50}},
    }
    write_tables(cpu, {"p2v": build_table(results), "v2p": build_table({"single_det": results["single_det"]})}, 2)
    scores = {"target_seg_miou": 0.10, "target_det_ap50": 0.30}
    target = {
        "student": {0: scores, 1: {**scores, "target_seg_miou": 0.12}},
        "student_unlabelled": {0: {"target_seg_miou": 0.17, "target_det_ap50": 0.40}},
    }
    write_target_tables(unlabelled, "suburb", {"p2v": build_target_table(target), "v2p": build_target_table({})}, 2)

    text = render.render_method(tmp_path)
    # single task det: mean 25.0, sample std sqrt(((0.05)^2 + (0.05)^2) / 1) = 0.0707 → 7.1; teachers: no spread
    assert "| Teacher (R50-PAFPN) | 50.0 | 60.0 | – | – |" in text
    assert "| Single task | **25.0 ± 7.1** | 42.0 ± 2.8 | **25.0 ± 7.1** | – |" in text
    assert "| Partial MTL | 15.0 ± 7.1 | **50.0 ± 0.0** | – | – |" in text
    # sources only 11.0 mIoU (mean of 10 and 12) → 17.0: +6.0; AP50 30.0 → 40.0
    assert "p2v mIoU 11.0 → 17.0 (+6.0), AP50 30.0 → 40.0 (+10.0); v2p mIoU –, AP50 –." in text
    assert "mean ± sample std over 2 seeds" in text
