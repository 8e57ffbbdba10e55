"""Which runs make up a table, and how each run's training config is derived from a preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.errors import ConfigError

DIRECTIONS: dict[str, tuple[str, str]] = {
    "p2v": ("potsdam", "vaihingen"),
    "v2p": ("vaihingen", "potsdam"),
}
"""direction → (dataset used for detection, dataset used for segmentation), as in the paper's two tables."""


@dataclass(frozen=True)
class Row:
    """One row of a table: which run gives its detection numbers and which its segmentation numbers."""

    label: str
    det_run: str
    seg_run: str


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    tasks: tuple[str, ...]
    soft: bool = False
    feature: str = "none"
    teacher: bool = False

    @property
    def uses_kd(self) -> bool:
        return self.soft or self.feature != "none"


RUNS: tuple[RunSpec, ...] = (
    RunSpec("teacher_det", "models/teacher_det.yaml", ("det",), teacher=True),
    RunSpec("teacher_seg", "models/teacher_seg.yaml", ("seg",), teacher=True),
    RunSpec("single_det", "models/student.yaml", ("det",)),
    RunSpec("single_seg", "models/student.yaml", ("seg",)),
    RunSpec("mtl", "models/student.yaml", ("det", "seg")),
    RunSpec("mtl_soft", "models/student.yaml", ("det", "seg"), soft=True),
    RunSpec("mtl_mse", "models/student.yaml", ("det", "seg"), feature="mse"),
    RunSpec("mtl_pdf", "models/student.yaml", ("det", "seg"), feature="pdf"),
    RunSpec("mtl_soft_mse", "models/student.yaml", ("det", "seg"), soft=True, feature="mse"),
    RunSpec("mtl_soft_pdf", "models/student.yaml", ("det", "seg"), soft=True, feature="pdf"),
)

ROWS: tuple[Row, ...] = (
    Row("Teacher (R50-PAFPN)", "teacher_det", "teacher_seg"),
    Row("Single task", "single_det", "single_seg"),
    Row("Partial MTL", "mtl", "mtl"),
    Row("+ soft", "mtl_soft", "mtl_soft"),
    Row("+ MSE", "mtl_mse", "mtl_mse"),
    Row("+ PDF", "mtl_pdf", "mtl_pdf"),
    Row("+ soft + MSE", "mtl_soft_mse", "mtl_soft_mse"),
    Row("+ soft + PDF", "mtl_soft_pdf", "mtl_soft_pdf"),
)


KD_TEACHERS = ("teachers", "students")
"""Preset key ``kd_teachers``: who teaches the distilled runs. ``teachers`` (default, the paper): the two
ResNet50-PAFPN teachers, trained once per direction. ``students``: the same seed's single-task students (no teacher
runs: what fits ``make demo``'s time on a CPU)."""

STUDENT_TEACHERS = {"det": "single_det", "seg": "single_seg"}
"""With ``kd_teachers: students``, the run whose best checkpoint teaches each task."""


def selected_runs(preset: dict[str, Any]) -> tuple[RunSpec, ...]:
    """The runs a preset asks for (``runs:``, default all), plus the teachers any distilled run needs."""
    names = preset.get("runs") or [spec.name for spec in RUNS]
    known = {spec.name: spec for spec in RUNS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"preset key 'runs': unknown run(s) {unknown}; expected names from {list(known)}")
    if any(known[name].uses_kd for name in names):
        extra = list(STUDENT_TEACHERS.values()) if kd_teachers(preset) == "students" else ["teacher_det", "teacher_seg"]
        names = [*names, *extra]
    return tuple(spec for spec in RUNS if spec.name in names)


def kd_teachers(preset: dict[str, Any]) -> str:
    """The preset's ``kd_teachers`` (see :data:`KD_TEACHERS`), checked."""
    value = preset.get("kd_teachers", "teachers")
    if value not in KD_TEACHERS:
        raise ConfigError(f"preset key 'kd_teachers': expected one of {list(KD_TEACHERS)}, found {value!r}")
    return value


def run_overrides(
    spec: RunSpec,
    preset: dict[str, Any],
    det_chips: str,
    seg_chips: str,
    out_dir: str,
    seed: int,
    teachers: dict[str, str],
) -> list[str]:
    """``key=value`` overrides turning the defaults into this run's training config."""
    overrides = {f"{k}": v for k, v in (preset.get("train") or {}).items()}
    if spec.teacher:
        overrides.update(preset.get("teacher") or {})
    models = preset.get("models") or {}
    overrides.update(
        {
            "name": spec.name,
            "model": models.get(spec.name if spec.teacher else "student", spec.model),
            "tasks": list(spec.tasks),
            "data.det": det_chips if "det" in spec.tasks else None,
            "data.seg": seg_chips if "seg" in spec.tasks else None,
            "data.val_split": "val",
            "kd.soft": spec.soft,
            "kd.feature": spec.feature,
            "runtime.seed": seed,
            "runtime.out": out_dir,
        }
    )
    if spec.uses_kd:
        overrides["kd.det_teacher"] = teachers["det"]
        overrides["kd.seg_teacher"] = teachers["seg"]
    return [f"{k}={_yaml(v)}" for k, v in overrides.items()]


def _yaml(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: paths with ': ' or '#' and words like 'yes' stay strings
