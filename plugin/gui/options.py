"""Flood Mapper's page in Settings ▸ Options (ui/options.ui), with connection and engine tests.

The tests run as QgsTasks so QGIS stays responsive while a server answers or the engine starts (~1 min).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsOptionsPageWidget, QgsOptionsWidgetFactory
from qgis.PyQt import uic
from qgis.PyQt.QtGui import QIcon

from ..core.settings import Settings
from ..toolbelt import resources
from ..toolbelt import settings as stored_settings
from ..toolbelt.i18n import tr

ROOT = Path(__file__).resolve().parents[2]
FORM_CLASS, _ = uic.loadUiType(str(ROOT / "ui" / "options.ui"))
DEVICES = ["auto", "gpu", "cpu"]
DTYPES = ["auto", "float16", "float32", "bfloat16"]


def describe_server(settings: Settings) -> str:
    """What a remote server is: version, models, which transport it serves (runs in a task)."""
    from ..toolbelt.server import remote_client

    client = remote_client(settings, settings.server_url, read_timeout=min(settings.read_timeout, 60.0))
    try:
        models = client.models()
        lines = [f"Server {settings.server_url}: vLLM {client.version()}", f"Models: {', '.join(models)}"]
        for model in models:
            kind = client.server_kind(model)
            lines.append(
                f"{model}: " + ("image-to-image (terratorch_segmentation IOProcessor)" if kind == "image"
                                else "tensor-to-tensor (no IOProcessor plugin)")
            )
        return "\n".join(lines)
    finally:
        client.close()


def describe_engine(settings: Settings) -> str:
    from ..core.engines import engine_status

    return engine_status(settings, start=True).summary()


class FloodMapperOptionsWidget(QgsOptionsPageWidget, FORM_CLASS):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("floodmapperOptions")
        self.device.addItems(DEVICES)
        self.dtype.addItems(DTYPES)
        self.server_dtype.addItems(DTYPES)
        self._task: QgsTask | None = None
        self.load(stored_settings.load(apply_env=False))
        self.testConnectionButton.clicked.connect(self.test_connection)
        self.testEngineButton.clicked.connect(self.test_engine)

    # --- settings <-> widgets ----------------------------------------------------------------------------
    def load(self, s: Settings) -> None:
        self.server_url.setText(s.server_url)
        self.authcfg.setConfigId(s.authcfg)
        self.connect_timeout.setValue(s.connect_timeout)
        self.read_timeout.setValue(s.read_timeout)
        self.verify_tls.setChecked(s.verify_tls)
        self.ca_bundle.setFilePath(s.ca_bundle)
        self.path_map_local.setText(s.path_map_local)
        self.path_map_server.setText(s.path_map_server)
        self.vllm_python.setFilePath(s.vllm_python)
        self.model.setText(s.model)
        self.device.setCurrentIndex(max(0, DEVICES.index(s.device) if s.device in DEVICES else 0))
        self.dtype.setCurrentIndex(max(0, DTYPES.index(s.dtype) if s.dtype in DTYPES else 0))
        self.server_dtype.setCurrentIndex(max(0, DTYPES.index(s.server_dtype) if s.server_dtype in DTYPES else 0))
        self.max_num_seqs.setValue(s.max_num_seqs)
        self.gpu_memory_utilization.setValue(s.gpu_memory_utilization)
        self.extra_args.setText(s.extra_args)
        self.startup_timeout.setValue(s.startup_timeout)
        self.image_max_megapixels.setValue(s.image_max_megapixels)
        self.retry_wait.setValue(s.retry_wait)

    def current(self) -> Settings:
        return replace(
            Settings(),
            server_url=self.server_url.text().strip(),
            authcfg=self.authcfg.configId(),
            connect_timeout=self.connect_timeout.value(),
            read_timeout=self.read_timeout.value(),
            verify_tls=self.verify_tls.isChecked(),
            ca_bundle=self.ca_bundle.filePath(),
            path_map_local=self.path_map_local.text().strip(),
            path_map_server=self.path_map_server.text().strip(),
            vllm_python=self.vllm_python.filePath() or Settings().vllm_python,
            model=self.model.text().strip() or Settings().model,
            device=self.device.currentText(),
            dtype=self.dtype.currentText(),
            max_num_seqs=self.max_num_seqs.value(),
            gpu_memory_utilization=self.gpu_memory_utilization.value(),
            extra_args=self.extra_args.text().strip(),
            startup_timeout=self.startup_timeout.value(),
            image_max_megapixels=self.image_max_megapixels.value(),
            retry_wait=self.retry_wait.value(),
            server_dtype=self.server_dtype.currentText(),
        )

    def apply(self) -> None:  # QgsOptionsPageWidget API: the user pressed OK
        stored_settings.save(self.current())

    # --- tests -------------------------------------------------------------------------------------------
    def _run_task(self, title: str, function) -> None:
        settings = self.current()
        self.reportText.setPlainText(tr("{title}: running…").format(title=title))

        def work(task):
            return function(settings)

        def finished(exception, result=None):
            if exception is not None:
                self.reportText.setPlainText(f"{title}: {exception}")
            else:
                self.reportText.setPlainText(str(result))

        self._task = QgsTask.fromFunction(title, work, on_finished=finished)
        QgsApplication.taskManager().addTask(self._task)

    def test_connection(self) -> None:
        self._run_task(tr("Test connection"), describe_server)

    def test_engine(self) -> None:
        self._run_task(tr("Test engine"), describe_engine)


class FloodMapperOptionsFactory(QgsOptionsWidgetFactory):
    def __init__(self) -> None:
        super().__init__()
        self.setTitle(tr("Flood Mapper"))

    def icon(self) -> QIcon:
        return resources.icon()

    def createWidget(self, parent):  # noqa: N802 (QGIS API)
        return FloodMapperOptionsWidget(parent)

