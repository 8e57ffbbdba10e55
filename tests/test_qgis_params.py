"""QGIS parameters as data: every algorithm lists its parameters as specs (pmtl_qgis/algorithms/params.py) that the
base's initAlgorithm builds; a spec's kind word gives the QGIS class and the options the word implies."""

from __future__ import annotations

import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
)
from qgis_helpers import ensure_provider

from pmtl_qgis.algorithms.base import PmtlAlgorithm
from pmtl_qgis.algorithms.params import ADVANCED_OPTIONAL, output, spec

pytestmark = pytest.mark.qgis

DECLARED_BY_HAND = {"pmtl:install_dependencies"}
"""Runs outside the engine's scope (it installs what the engine needs) and translates its choices: builds its one
parameter itself."""


def pmtl_algorithms() -> list[PmtlAlgorithm]:
    ensure_provider()
    return [a for a in QgsApplication.processingRegistry().algorithms() if a.provider().id() == "pmtl"]


def test_every_algorithm_declares_its_parameters_as_specs(qgis_processing):
    algorithms = [a for a in pmtl_algorithms() if a.id() not in DECLARED_BY_HAND]
    assert len(algorithms) >= 8
    for alg in algorithms:
        assert type(alg).initAlgorithm is PmtlAlgorithm.initAlgorithm, alg.id()
        parameters = [item for item in alg.parameters() if not item.output]
        outputs = {item.name for item in alg.parameters() if item.output}
        assert [item.name for item in parameters] == [d.name() for d in alg.parameterDefinitions()], alg.id()
        assert all(item.help for item in parameters), alg.id()
        destinations = {d.name() for d in alg.destinationParameterDefinitions()}
        assert outputs == {o.name() for o in alg.outputDefinitions()} - destinations, alg.id()


def test_a_spec_builds_its_qgis_parameter(qgis_processing):
    class Probe(PmtlAlgorithm):
        ALG_ID = "probe"

        def parameters(self):
            return [
                spec("folder", "DATA", "Data", "A folder.", optional=True),
                spec("double", "RATE", "Rate", "A rate.", **ADVANCED_OPTIONAL, minValue=0.5),
                spec("enum", "MODE", "Mode", "A mode.", options=("a", "b"), defaultValue=1),
                output("number", "SCORE", "Score"),
            ]

    probe = Probe()
    probe.initAlgorithm()
    folder, rate, mode = (probe.parameterDefinition(n) for n in ("DATA", "RATE", "MODE"))
    assert isinstance(folder, QgsProcessingParameterFile) and folder.behavior() == QgsProcessingParameterFile.Folder
    assert folder.flags() & QgsProcessingParameterDefinition.FlagOptional and folder.help() == "A folder."
    assert isinstance(rate, QgsProcessingParameterNumber) and rate.dataType() == QgsProcessingParameterNumber.Double
    assert rate.minimum() == 0.5 and rate.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    assert isinstance(mode, QgsProcessingParameterEnum) and mode.options() == ["a", "b"] and mode.defaultValue() == 1
    assert probe.group() == "" and Probe.GROUP_ID == ""
    score = probe.outputDefinition("SCORE")
    assert (
        score.type() == "outputNumber" and score.description() == "Score" and probe.parameterDefinition("SCORE") is None
    )


def test_a_groups_name_is_its_id_capitalised(qgis_processing):
    groups = {(a.groupId(), a.group()) for a in pmtl_algorithms()}
    assert groups == {("data", "Data"), ("model", "Model"), ("inference", "Inference"), ("setup", "Setup")}
