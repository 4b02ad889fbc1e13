"""deploy/k8s: every overlay renders, validates offline against the Kubernetes schemas, and
keeps the deployment policy (probes, resources, non-root, placement, autoscaling, drain)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.artifacts import DEPLOY, OVERLAYS, WORKER_ROLES, find, render
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.metrics import CONTRACT, series_names

# An older release still in use (native gRPC probes are GA from 1.27), and the newest one
# kubernetes-validate carries.
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
GPU_CLASS = {"prefill": "compute", "decode": "bandwidth"}
GRPC_PORT = {"prefill": 50051, "decode": 50052}
DEFAULT_WORKER_GRACE_S = 30.0  # the workers' --grace default
POD_KINDS = {"Deployment", "StatefulSet"}


def pod_templates(resources: tuple[kustomize.Resource, ...]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{r['kind']}/{r['metadata']['name']}", r["spec"]["template"]) for r in resources if r["kind"] in POD_KINDS
    ]


def config_data(resources: tuple[kustomize.Resource, ...]) -> dict[str, str]:
    return dict(find(resources, "ConfigMap", "pdserve-config")["data"])


def test_the_overlays_are_the_documented_ones() -> None:
    assert sorted(p.name for p in (DEPLOY / "k8s" / "overlays").iterdir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renders_like_the_real_kustomize(overlay: str) -> None:
    """The offline renderer must agree with kustomize wherever a binary is installed."""
    directory = DEPLOY / "k8s" / "overlays" / overlay
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    elif shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(directory)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    real = {key(r): normalize(r) for r in yaml.safe_load_all(proc.stdout) if r}
    ours = {key(r): normalize(r) for r in render(overlay)}
    assert sorted(ours) == sorted(real)
    for k in real:
        assert ours[k] == real[k], k


def key(res: kustomize.Resource) -> tuple[str, str, str]:
    return res["kind"], res["metadata"].get("namespace", ""), res["metadata"]["name"]


def normalize(value: Any, field: str = "") -> Any:
    """Order-free where Kubernetes merges by key (kustomize appends patched items elsewhere)."""
    if isinstance(value, dict):
        return {k: normalize(v, k) for k, v in value.items()}
    if isinstance(value, list):
        items = [normalize(v) for v in value]
        merge_key = kustomize.MERGE_KEYS.get(field)
        if merge_key and all(isinstance(i, dict) for i in items):
            return sorted(items, key=lambda i: str(i.get(merge_key, i.get("port"))))
        return items
    return value


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_validates_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    errors = []
    for res in render(overlay):
        where = f"{res['kind']}/{res['metadata']['name']}"
        try:
            if res["kind"] in SCHEMAS:
                jsonschema.Draft202012Validator(SCHEMAS[res["kind"]]).validate(res)
            else:
                kubernetes_validate.validate(res, version, strict=True)
        except jsonschema.ValidationError as exc:  # kubernetes-validate's error is a subclass
            errors.append(f"{where} at {'.'.join(map(str, exc.path))}: {exc.message}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_probed_bounded_and_non_root(overlay: str) -> None:
    for where, template in pod_templates(render(overlay)):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        for c in pod["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(c), f"{where}/{c['name']}: probes"
        for c in pod["containers"] + pod.get("initContainers", []):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{where}/{c['name']}: {bound}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert c["securityContext"].get("runAsUser", 1) > 0, f"{where}/{c['name']}"
            assert c["image"].rsplit(":", 1)[-1] not in ("", "latest") and ":" in c["image"], c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router_probes_restart_it_only_when_it_stops_answering(overlay: str) -> None:
    """/ready is 503 while a model has no decode worker (none registered yet, or all gone):
    readiness only. Start-up and liveness ask /version, which the router answers alone."""
    dep = find(render(overlay), "Deployment", "pdserve-router")
    (router,) = dep["spec"]["template"]["spec"]["containers"]
    assert router["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("startupProbe", "livenessProbe"):
        assert router[probe]["httpGet"]["path"] == "/version", probe


@pytest.mark.parametrize("role", WORKER_ROLES)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_deployment_has_role_label_probes_placement_and_autoscaler(overlay: str, role: str) -> None:
    resources = render(overlay)
    dep = find(resources, "Deployment", f"pdserve-{role}")
    pod = dep["spec"]["template"]["spec"]
    for labels in (
        dep["metadata"]["labels"],
        dep["spec"]["selector"]["matchLabels"],
        dep["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels["app.kubernetes.io/component"] == role
    (worker,) = pod["containers"]
    assert worker["args"][0] == role  # the worker images' entrypoint is `pdserve`
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["grpc"]["port"] == GRPC_PORT[role], probe
    env = {e["name"]: e for e in worker["env"]}
    assert env["PDSERVE_PORT"]["value"] == str(GRPC_PORT[role])
    assert env["PDSERVE_KV_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    # each pod registers its own address (the pod IP, expanded by the kubelet) in Redis
    names = [e["name"] for e in worker["env"]]
    assert env["PDSERVE_ADVERTISE"]["value"] == f"$(PDSERVE_KV_HOST):{GRPC_PORT[role]}"
    assert names.index("PDSERVE_KV_HOST") < names.index("PDSERVE_ADVERTISE"), "$(VAR) needs VAR defined first"
    assert config_data(resources)["PDSERVE_STATE_URL"].startswith("rediss://pdserve-redis:")

    gpus = worker["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpus == "1"
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [
            {"key": "pdserve.io/gpu-class", "operator": "In", "values": [GPU_CLASS[role]]}
        ]
    else:
        assert gpus is None and "nvidia.com/gpu" not in worker["resources"]["requests"]
        assert "affinity" not in pod and "worker-gpu" not in worker["image"]

    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    (hpa,) = [
        r
        for r in resources
        if r["kind"] == "HorizontalPodAutoscaler" and r["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    ]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "vllm_num_requests_waiting"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_exceeds_the_worker_drain(overlay: str) -> None:
    resources = render(overlay)
    grace = float(config_data(resources).get("PDSERVE_GRACE_S", DEFAULT_WORKER_GRACE_S))
    for role in WORKER_ROLES:
        pod = find(resources, "Deployment", f"pdserve-{role}")["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        if "--grace" in args:
            grace = float(args[args.index("--grace") + 1])
        assert pod["terminationGracePeriodSeconds"] > grace, role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_ports_connect(overlay: str) -> None:
    """Services, PDBs and monitors select pods that exist, on ports those pods name."""
    resources = render(overlay)
    pods = {where: t for where, t in pod_templates(resources)}

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        found = [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]
        assert found, selector
        return found

    def port_names(template: dict[str, Any]) -> set[str]:
        return {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}

    services = {}
    for res in resources:
        spec = res.get("spec", {})
        if res["kind"] == "Service":
            for template in selected(spec["selector"]):
                assert {p["targetPort"] for p in spec["ports"]} <= port_names(template), res["metadata"]["name"]
            services[res["metadata"]["name"]] = res
        elif res["kind"] == "PodDisruptionBudget":
            selected(spec["selector"]["matchLabels"])
        elif res["kind"] == "PodMonitor":
            for template in selected(spec["selector"]["matchLabels"]):
                assert {e["port"] for e in spec["podMetricsEndpoints"]} <= port_names(template)
    for res in resources:
        if res["kind"] == "ServiceMonitor":
            svc = next(
                s
                for s in services.values()
                if res["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
            )
            assert {e["port"] for e in res["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}

    router = find(resources, "Deployment", "pdserve-router")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in router["env"]}
    assert "PDSERVE_PREFILL" not in env and "PDSERVE_DECODE" not in env, "workers are found through Redis"
    host, port = config_data(resources)["PDSERVE_STATE_URL"].removeprefix("rediss://").split("/")[0].split(":")
    assert int(port) in {p["port"] for p in services[host]["spec"]["ports"]}  # the Redis Service
    for role in WORKER_ROLES:
        svc = services[f"pdserve-{role}"]
        assert svc["spec"]["clusterIP"] == "None", "headless: the name resolves to the worker pods"
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == role


def test_prometheus_adapter_serves_the_hpa_metric() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
    rules = {r["name"]["as"]: r for r in values["rules"]["custom"]}
    for overlay in OVERLAYS:
        for hpa in (r for r in render(overlay) if r["kind"] == "HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                rule = rules[metric["pods"]["metric"]["name"]]
                assert series_names(rule["seriesQuery"]) <= CONTRACT
                assert series_names(adapter_query(rule)) <= CONTRACT
                assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # a Pods metric


def adapter_query(rule: dict[str, Any]) -> str:
    """The rule's metricsQuery as the adapter expands it for one pod."""
    query = rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
    return query.replace("<<.LabelMatchers>>", 'pod="p"').replace("<<.GroupBy>>", "pod")


def secret_mounts(template: dict[str, Any]) -> dict[str, str]:
    """Secret name → where the pod's first container mounts it."""
    pod = template["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {secrets[m["name"]]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in secrets}


def secret_keys(template: dict[str, Any], secret: str) -> set[str]:
    """The keys of ``secret`` that the pod mounts (all of them: ``{"*"}``)."""
    (volume,) = [v["secret"] for v in template["spec"]["volumes"] if v.get("secret", {}).get("secretName") == secret]
    return {item["key"] for item in volume["items"]} if "items" in volume else {"*"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_serves_tls_only_and_the_pdserve_pods_verify_it_with_the_ca_alone(overlay: str) -> None:
    """Redis's certificate comes from the Secret pdserve-redis-tls (not shipped: the operator's
    or cert-manager's); its plaintext port is closed; routers and workers dial rediss:// and
    mount the CA only, never the server's key."""
    resources = render(overlay)
    config = config_data(resources)
    assert config["PDSERVE_STATE_URL"].startswith("rediss://pdserve-redis:6379/")
    redis_pod = find(resources, "StatefulSet", "pdserve-redis")["spec"]["template"]
    (redis,) = redis_pod["spec"]["containers"]
    script = " ".join(redis["command"])
    tls_dir = secret_mounts(redis_pod)["pdserve-redis-tls"]
    assert "--port 0 --tls-port 6379" in script, "TLS only: the plaintext port is closed"
    for flag, key in (("--tls-cert-file", "tls.crt"), ("--tls-key-file", "tls.key"), ("--tls-ca-cert-file", "ca.crt")):
        assert f"{flag} {tls_dir}/{key}" in script
    assert secret_keys(redis_pod, "pdserve-redis-tls") == {"tls.crt", "tls.key", "ca.crt"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert f"redis-cli --tls --cacert {tls_dir}/ca.crt ping" in " ".join(redis[probe]["exec"]["command"])
    for name in ("pdserve-router", *(f"pdserve-{role}" for role in WORKER_ROLES)):
        template = find(resources, "Deployment", name)["spec"]["template"]
        assert config["PDSERVE_STATE_TLS_CA"] == secret_mounts(template)["pdserve-redis-tls"] + "/ca.crt", name
        assert secret_keys(template, "pdserve-redis-tls") == {"ca.crt"}, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_needs_a_password_and_every_pdserve_pod_has_it_and_the_registry_secret(overlay: str) -> None:
    """The Secret is not shipped (no default password); every pod reads it from a mount."""
    resources = render(overlay)
    assert not [r for r in resources if r["kind"] == "Secret"]
    config = config_data(resources)
    assert "@" not in config["PDSERVE_STATE_URL"], "no password in the URL"
    redis_pod = find(resources, "StatefulSet", "pdserve-redis")["spec"]["template"]
    (redis,) = redis_pod["spec"]["containers"]
    script = " ".join(redis["command"])
    assert "requirepass" in script and "redis-server -" in script, "the password via stdin, not argv"
    assert "--maxmemory " in script and "--maxmemory-policy noeviction" in script
    for probe in ("readinessProbe", "livenessProbe"):
        assert "REDISCLI_AUTH" in " ".join(redis[probe]["exec"]["command"])
    assert secret_mounts(redis_pod)["pdserve-secrets"] == "/run/secrets/pdserve"
    for name in ("pdserve-router", *(f"pdserve-{role}" for role in WORKER_ROLES)):
        mount = secret_mounts(find(resources, "Deployment", name)["spec"]["template"])["pdserve-secrets"]
        for key in ("PDSERVE_STATE_PASSWORD_FILE", "PDSERVE_REGISTRY_SECRET_FILE"):
            assert config[key].startswith(mount + "/"), (name, key)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_fence_each_role(overlay: str) -> None:
    """Redis only from pdserve pods; a worker's gRPC only from routers; KV peers reach each
    other on any port (UCX picks its own); the router's API from anywhere."""
    resources = render(overlay)
    policies = {
        r["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: r
        for r in resources
        if r["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {"redis", "router", *WORKER_ROLES}
    components = {t["metadata"]["labels"]["app.kubernetes.io/component"] for _, t in pod_templates(resources)}
    assert components <= set(policies), "every pod is fenced"

    def sources(rule: dict[str, Any]) -> set[str]:
        found = set()
        for peer in rule.get("from", []):
            sel = peer.get("podSelector")
            if sel is None:
                found.add("cluster" if "namespaceSelector" in peer else "?")
            elif "matchLabels" in sel:
                found.add(sel["matchLabels"]["app.kubernetes.io/component"])
            else:
                (expr,) = [e for e in sel["matchExpressions"] if e["key"] == "app.kubernetes.io/component"]
                found.update(expr["values"])
        return found or {"anywhere"}

    (redis_rule,) = policies["redis"]["spec"]["ingress"]
    assert sources(redis_rule) == {"router", *WORKER_ROLES} and redis_rule["ports"] == [
        {"port": "redis", "protocol": "TCP"}
    ]
    for role in WORKER_ROLES:
        rules = {
            tuple(p["port"] for p in r.get("ports", [])) or "any": sources(r) for r in policies[role]["spec"]["ingress"]
        }
        peer = "decode" if role == "prefill" else "prefill"
        assert rules == {("grpc",): {"router"}, "any": {peer}, ("metrics",): {"cluster"}}, role
    (router_rule,) = policies["router"]["spec"]["ingress"]
    assert sources(router_rule) == {"anywhere"} and router_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
