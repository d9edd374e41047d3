"""Every file in deploy/ is checked offline, against the schemas its tools ship.

- deploy/compose.yaml: the Compose specification's JSON schema, vendored in check-jsonschema
  (`--builtin-schema vendor.compose-spec`);
- deploy/k8s/**.yaml: the Kubernetes API's JSON schemas shipped in kubernetes-validate,
  strict (an unknown field, a typo, fails), for the oldest and the newest version we claim;
- deploy/nginx/voxgate.conf: `nginx -t`, rendered with loopback replica addresses (the file's
  compose service names do not resolve here); it runs for real in tests/deploy/test_nginx.py.
Neither schema tool reaches the network for these (both read schemas from their package).
Beyond the schemas: every VOXGATE_* variable the files set is a setting the server reads, and
the grace periods outlast the server's drain.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtests.balancer import (
    NGINX_CONF,
    REPO_ROOT,
    check_nginx_conf,
    nginx_binary,
    render_nginx_conf,
    write_nginx_conf,
)
from server.http.shutdown import SHUTDOWN_LEFTOVER_S
from server.settings import Settings
from tests.conftest import fake_app
from tests.harness import running_server

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
K8S_FILES = sorted((DEPLOY / "k8s").rglob("*.yaml"))
# the Kubernetes versions the manifests are written for: HPA autoscaling/v2 (1.23+) and
# everything else stable well before the oldest; the newest is kubernetes-validate's latest
K8S_VERSIONS = ("1.29.0", "latest")
# settings issue 16 adds beside this branch (Redis shared state, worker processes); once they
# are fields of Settings this set is redundant
SETTINGS_BEING_ADDED: set[str] = set()  # every setting the deploy files name is a field now
# the server's shutdown after its grace period: waiting for the sessions to close (3 s,
# server/http/shutdown.py), uvicorn's leftover requests, the process's exit
SHUTDOWN_AFTER_GRACE_S = 3 + SHUTDOWN_LEFTOVER_S + 5


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_compose_file_matches_the_compose_specification() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is in the dev extras")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_can_fail() -> None:
    """The same check on a broken copy fails (so a pass above means something)."""
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is in the dev extras")
    broken = COMPOSE.read_text().replace("stop_grace_period: 35s", "stop_grace_period: [35]", 1)
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", "-"],
        input=broken,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_kubernetes_manifests_match_the_api_schemas(path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the dev extras"
    )
    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    documents = yaml_documents(path)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, wanted, strict=True)  # raises ValidationError


def test_the_kubernetes_schema_check_can_fail() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is in the dev extras"
    )
    (deployment,) = yaml_documents(DEPLOY / "k8s" / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pat"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29.0", strict=True)


def voxgate_variables() -> dict[str, set[str]]:
    """VOXGATE_* names set by each deploy file."""
    found: dict[str, set[str]] = {}
    for path in [COMPOSE, *K8S_FILES]:
        names = set(re.findall(r"\b(VOXGATE_[A-Z0-9_]+)\b", path.read_text()))
        if names:
            found[str(path.relative_to(DEPLOY))] = names
    return found


def test_every_voxgate_variable_is_a_setting() -> None:
    known = set(Settings.model_fields) | SETTINGS_BEING_ADDED
    files = voxgate_variables()
    assert "compose.yaml" in files and "k8s/deployment.yaml" in files
    for path, names in files.items():
        unknown = {name for name in names if name.removeprefix("VOXGATE_").lower() not in known}
        assert not unknown, f"{path}: {sorted(unknown)} are not settings (server/settings.py)"


def test_grace_periods_outlast_the_drain() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    for name in ("voxgate-1", "voxgate-2"):
        service = compose["services"][name]
        grace_s = float(service["environment"]["VOXGATE_SHUTDOWN_GRACE_S"])
        assert service["environment"]["VOXGATE_REPLICA_ID"] == name
        stop_s = float(service["stop_grace_period"].removesuffix("s"))
        assert stop_s >= grace_s + SHUTDOWN_AFTER_GRACE_S, (name, stop_s, grace_s)
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
    (deployment,) = yaml_documents(DEPLOY / "k8s" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    grace_s = float(env["VOXGATE_SHUTDOWN_GRACE_S"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed_s = float(pre_stop[1]) + grace_s + SHUTDOWN_AFTER_GRACE_S
    assert pod["terminationGracePeriodSeconds"] >= needed_s
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


async def test_the_autoscaled_metric_is_one_the_server_exports() -> None:
    (hpa,) = yaml_documents(DEPLOY / "k8s" / "hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    (adapter,) = yaml_documents(DEPLOY / "k8s" / "monitoring" / "prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert [rule["name"]["as"] for rule in rules] == [name]
    assert rules[0]["seriesQuery"].startswith(name + "{")
    async with running_server(fake_app()) as url, httpx.AsyncClient() as http:
        exported = (await http.get(url + "/metrics")).text
    assert re.search(rf"^{name}(\{{.*\}})? ", exported, re.M), f"{name} not in /metrics"


def test_rendering_changes_only_the_replicas_and_the_listen_address() -> None:
    original = NGINX_CONF.read_text()
    rendered = render_nginx_conf(
        original, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"], "127.0.0.1:8081"
    )
    removed = set(original.splitlines()) - set(rendered.splitlines())
    added = set(rendered.splitlines()) - set(original.splitlines())
    assert {line.strip() for line in removed} == {
        "server voxgate-1:8000 max_fails=0;",
        "server voxgate-2:8000 max_fails=0;",
        "listen 80;",
    }
    assert {line.strip() for line in added} == {
        "server 127.0.0.1:9001 max_fails=0;",
        "server 127.0.0.1:9002 max_fails=0;",
        "server 127.0.0.1:9003 max_fails=0;",
        "listen 127.0.0.1:8081;",
    }


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (scripts/system-deps.sh)")
async def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    main = write_nginx_conf(tmp_path, ["127.0.0.1:9001", "127.0.0.1:9002"], "127.0.0.1:8081")
    output = await check_nginx_conf(main)
    assert "test is successful" in output
