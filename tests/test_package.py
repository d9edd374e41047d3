"""The package's face: the embedding API loads on first use, and worker processes stay light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import server


def test_every_exported_name_resolves_from_its_home() -> None:
    assert sorted(server.__all__) == sorted(server._HOMES)
    for name in server.__all__:
        assert getattr(server, name) is getattr(importlib.import_module(server._HOMES[name]), name)


def test_a_model_worker_module_does_not_import_the_http_edge() -> None:
    probe = "import sys, server.model.llm_worker, server.vad.worker; print('fastapi' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
