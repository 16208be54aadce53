"""Processing algorithm `floodmapper:prepare_model`: a TerraTorch training run in, a vLLM model folder out.

Thin glue over core.model_prep.prepare_model: every validation problem is collected there; errors
become one QgsProcessingException listing all of them (nothing is written), warnings go to the log.
Touches no project or iface, so it runs in the background, in batch mode and in qgis_process.
"""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterString,
)
from qgis.PyQt.QtGui import QIcon

from ..core.errors import FloodMapperError
from ..toolbelt import resources
from ..toolbelt import settings as stored_settings
from ..toolbelt.dependencies import require_dependencies
from ..toolbelt.i18n import tr

# QGIS 3.36 moved the file-parameter behaviour enum into Qgis; 3.22 only has the class-scoped one.
FILE_BEHAVIOR = getattr(Qgis, "ProcessingFileParameterBehavior", None) or QgsProcessingParameterFile.Behavior


class PrepareModelAlgorithm(QgsProcessingAlgorithm):
    TTCONFIG = "TTCONFIG"
    INPUT_SPEC = "INPUT_SPEC"
    WEIGHTS = "WEIGHTS"
    FP16 = "FP16"
    OVERWRITE = "OVERWRITE"
    OUTPUT = "OUTPUT"
    WARNINGS = "WARNINGS"

    def createInstance(self) -> PrepareModelAlgorithm:
        return PrepareModelAlgorithm()

    def name(self) -> str:
        return "prepare_model"

    def displayName(self) -> str:
        return tr("Prepare model for vLLM")

    def shortDescription(self) -> str:
        return tr("Write a vLLM-ready model folder from a TerraTorch config and checkpoint")

    def icon(self) -> QIcon:
        return resources.icon()

    def tags(self) -> list[str]:
        return ["terratorch", "vllm", "model", "checkpoint", "config", "prithvi"]

    def shortHelpString(self) -> str:
        return tr(
            "Turns a TerraTorch training run into a folder a vLLM server can load: <i>config.json</i> "
            "(architectures Terratorch, pretrained_cfg with input, model and data) and "
            "<i>model.safetensors</i>.\n\n"
            "<b>TerraTorch config</b>: the LightningCLI YAML used for training (its model and data "
            "sections).\n"
            "<b>Input specification</b>: JSON text or a JSON file, e.g. "
            '{"target": "pixel_values", "data": {"pixel_values": {"type": "torch.Tensor", '
            '"shape": [6, 512, 512]}}}.\n'
            "<b>Checkpoint</b>: the Lightning .ckpt, a torch .pt/.pth or a .safetensors file.\n\n"
            "Everything is checked first (band lists, shapes, means/stds, arguments the installed TerraTorch "
            "no longer accepts, the checkpoint's class and band counts) and every problem is reported at "
            "once; nothing is written when one is an error. The folder is written atomically."
        )

    def initAlgorithm(self, config=None) -> None:
        self.addParameter(QgsProcessingParameterFile(
            self.TTCONFIG, tr("TerraTorch config (LightningCLI YAML)"), behavior=FILE_BEHAVIOR.File,
            fileFilter=tr("YAML files (*.yaml *.yml);;All files (*.*)")))
        self.addParameter(QgsProcessingParameterString(
            self.INPUT_SPEC, tr("Input specification (JSON text or a JSON file path)"), multiLine=True,
            defaultValue='{"target": "pixel_values", "data": {"pixel_values": '
                         '{"type": "torch.Tensor", "shape": [6, 512, 512]}}}'))
        self.addParameter(QgsProcessingParameterFile(
            self.WEIGHTS, tr("Checkpoint"), behavior=FILE_BEHAVIOR.File,
            fileFilter=tr("Checkpoints (*.ckpt *.pt *.pth *.safetensors *.bin);;All files (*.*)")))
        self.addParameter(QgsProcessingParameterBoolean(
            self.FP16, tr("Store weights as float16 (half the size)"), defaultValue=False))
        self.addParameter(QgsProcessingParameterBoolean(
            self.OVERWRITE, tr("Replace the output folder if it exists"), defaultValue=False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, tr("Model folder")))
        self.addOutput(QgsProcessingOutputString(self.WARNINGS, tr("Warnings")))
        # the folder destination parameter already provides the OUTPUT (folder) output

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):
        require_dependencies()
        from ..core.model_prep import ModelPreparationFailed, detect_terratorch_version, prepare_model

        feedback = feedback or QgsProcessingFeedback()
        ttconfig = self.parameterAsFile(parameters, self.TTCONFIG, context)
        spec = self.parameterAsString(parameters, self.INPUT_SPEC, context)
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context)
        out = self.parameterAsString(parameters, self.OUTPUT, context)
        fp16 = self.parameterAsBoolean(parameters, self.FP16, context)
        overwrite = self.parameterAsBoolean(parameters, self.OVERWRITE, context)
        if not out:
            raise QgsProcessingException(tr("No output folder given; choose where to write the model folder."))
        version = detect_terratorch_version(stored_settings.load().vllm_python)
        if version:
            feedback.pushInfo(tr("TerraTorch in the vLLM environment: {}").format(version))
        else:
            feedback.pushWarning(tr("The vLLM environment's TerraTorch version was not found; checks that "
                                    "depend on it are reported as warnings only."))
        try:
            result = prepare_model(ttconfig, spec, weights, out, fp16=fp16, overwrite=overwrite,
                                   terratorch_version=version)
        except ModelPreparationFailed as exc:
            for problem in exc.problems:
                if problem.level != "ERROR":
                    feedback.pushWarning(str(problem))
            raise QgsProcessingException(exc.message) from exc
        except (FloodMapperError, OSError) as exc:
            raise QgsProcessingException(str(exc)) from exc
        for problem in result.warnings:
            feedback.pushWarning(str(problem))
        feedback.pushInfo(tr("Wrote {} ({} tensors, {:.1f} MB of weights)").format(
            str(result.out_dir), result.tensors, result.weights_bytes / 1e6))
        feedback.setProgress(100)
        return {self.OUTPUT: str(result.out_dir), self.WARNINGS: "\n".join(str(p) for p in result.warnings)}
