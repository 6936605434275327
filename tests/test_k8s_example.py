"""examples/k8s/: the manifests parse, agree with each other, and agree with the node.

The HorizontalPodAutoscaler scales the Deployment on a metric the node exports (checked
against a real scrape), the Prometheus adapter serves that metric, the pod's ports and
probes are the node's, and the node.toml of the ConfigMap loads as the pod would load it
(its mounts and environment reproduced in a temporary folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from kerna import Agent, Kernel, Message, handler
from kerna.node import NodeHttp, load_config

from .test_node_daemon import call

pytestmark = pytest.mark.anyio

yaml = pytest.importorskip("yaml")

K8S = Path(__file__).resolve().parent.parent / "examples" / "k8s"


def documents(name: str) -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    return {d["kind"]: d for d in docs}


class Resize(Message):
    width: int


class Resizer(Agent):
    @handler
    async def resize(self, msg: Resize) -> None:
        pass


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [only] = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_the_hpa_scales_the_deployment_on_a_pods_metric_of_one_agent_type() -> None:
    docs = documents("kerna-node.yaml")
    hpa, deployment = docs["HorizontalPodAutoscaler"], docs["Deployment"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "kerna_pending_work"
    assert metric["pods"]["metric"]["selector"]["matchLabels"] == {"type": "Resizer"}
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_adapter_serves_the_metric_the_hpa_reads() -> None:
    hpa = documents("kerna-node.yaml")["HorizontalPodAutoscaler"]
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    config = yaml.safe_load(
        documents("prometheus-adapter.yaml")["ConfigMap"]["data"]["config.yaml"]
    )
    [rule] = config["rules"]
    assert rule["seriesQuery"].startswith(name + "{")
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]  # the HPA's type selector


async def test_the_node_exports_that_metric_per_agent_type() -> None:
    hpa = documents("kerna-node.yaml")["HorizontalPodAutoscaler"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]
    env = {"KERNA_CLUSTER": "c", "KERNA_NODE_ID": "a", "KERNA_HTTP_LISTEN": "127.0.0.1:0"}
    async with Kernel() as kernel:
        kernel.register(Resizer)
        http = NodeHttp(kernel, load_config(None, env))
        host, port = await http.start()
        try:
            text = (await call(f"http://{host}:{port}/metrics"))[1]
        finally:
            await http.close()
    selector = ",".join(f'{k}="{v}"' for k, v in metric["selector"]["matchLabels"].items())
    assert f"# TYPE {metric['name']} gauge" in text.splitlines()
    assert f"{metric['name']}{{{selector}}} 0.0" in text.splitlines()


def test_the_configmap_node_toml_loads_as_the_pod_loads_it(tmp_path: Path) -> None:
    docs = documents("kerna-node.yaml")
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    pod = container(docs)
    config_path = pod["args"][pod["args"].index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in pod["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    root = tmp_path / "root"
    for name, path in mounts.items():  # each volume's files where the pod sees them
        folder = root / path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        volume = volumes[name]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
            for key, text in docs["ConfigMap"]["data"].items():
                (folder / key).write_text(text)
        else:
            for item in volume["secret"]["items"]:
                (folder / item["path"]).write_text("a-cluster-secret\n")
    environ = {"POD_NAME": "kerna-node-7d9f-abcde", "POD_IP": "10.1.2.3"}
    for var in pod["env"]:
        if "value" in var:  # $(VAR) is Kubernetes' expansion of earlier variables
            environ[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ[m[1]], var["value"])
        elif "secretKeyRef" in var["valueFrom"]:
            environ[var["name"]] = "an-admin-token"
    config = load_config(root / config_path.lstrip("/"), environ, import_agents=False)
    assert config.node.id == "kerna-node-7d9f-abcde"
    assert config.transport.advertise == "tcp://10.1.2.3:7101"
    assert config.secret is not None
    assert config.secret.value.strip() == b"a-cluster-secret"
    ports = {p["name"]: p["containerPort"] for p in pod["ports"]}
    assert config.listen[1] == ports["http"]
    assert config.transport.url is not None
    assert config.transport.url.endswith(f":{ports['transport']}")
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert pod["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["readinessProbe"]["httpGet"]["path"] == "/readyz"
    grace = docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.node.stop_grace  # the drain finishes before SIGKILL
