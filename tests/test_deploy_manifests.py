"""deploy/k8s: rendered, schema-validated, and true to the service it deploys.

- `deploy/validate.sh` renders every overlay with kustomize and validates every object with kubeconform
  against the schemas in deploy/schemas (built-in kinds and the CRDs: ServiceMonitor, PrometheusRule,
  ScaledObject, TriggerAuthentication, KafkaTopic). The tools come from the Go module proxy (.ci/run:
  `deploy/validate.sh --install-tools`); without them the tests that need a rendering are skipped, unless
  HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1 (CI) turns that into a failure.
- The PrometheusRule is the rule files of deploy/prometheus (generated, never edited: no drift), and the
  vendored schemas are what deploy/schemas/generate.py makes from their sources.
- Every rendered overlay refers only to what the service has: the TOML keys of the ConfigMap are
  ServiceConfig/DetectorConfig fields (the file is loaded with the service's own loader, with the
  Deployment's environment), every HIDDENSTATE_* variable maps to a setting, the args parse with the real
  `hiddenstate serve` parser, the ports are the metrics port, the probe and scrape paths are answered by
  the service's HTTP endpoints, and every metric the PrometheusRule reads is one the service exports.
- Kafka: the KEDA trigger and the KafkaTopics name the configured topics and group; maxReplicaCount is
  the input's partitions; the changelog is compacted and co-partitioned; the NetworkPolicy lets the pod
  reach the configured brokers.
- End to end (needs the test Kafka broker): the image's entrypoint, run with the Deployment's args and
  environment and the overlay's config, on a read-only root filesystem with only the /tmp emptyDir
  writable (where this machine allows a mount namespace), becomes healthy and ready on the probed port,
  scores readings, and stops cleanly within terminationGracePeriodSeconds after SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumers.config import ServiceConfig, load_service_config
from detector.config import DetectorConfig
from tests.kafka_broker import create_topics, kafka_bootstrap, produce, read_all, unique_name  # noqa: F401
from tests.test_deploy_docker import env_of_final_stage, exec_form, yaml_module

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
VALIDATE = ROOT / "deploy" / "validate.sh"
RULE_FILES = sorted([*(ROOT / "deploy" / "prometheus").glob("*.yml"), *(ROOT / "deploy" / "prometheus").glob("*.yaml")])

# names Prometheus makes itself, not the service
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                  "scrape_series_added"}
# exported only once the service runs (see docs/metrics.md): the exposition of a service that never started lacks them
EXPORTED_WHEN_RUNNING = {"hiddenstate_last_poll_timestamp_seconds", "hiddenstate_broker_last_contact_timestamp_seconds"}
# parameters of KEDA's kafka scaler (pkg/scalers/kafka_scaler.go, KEDA v2.21)
KEDA_KAFKA_METADATA = {"bootstrapServers", "consumerGroup", "topic", "partitionLimitation", "lagThreshold",
                       "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers", "excludePersistentLag",
                       "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
                       "version", "tls", "unsafeSsl", "sasl", "saslTokenProvider", "awsRegion"}
KEDA_KAFKA_AUTH = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
# Pod Security Standards "restricted": the volume types it allows
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def _required(message: str) -> None:
    if os.environ.get("HIDDENSTATE_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(message + "; HIDDENSTATE_REQUIRE_DEPLOY_TOOLS=1 requires it")
    pytest.skip(message)


# --- rendering ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> dict:
    """deploy/validate.sh, run once: its exit status, output and the rendered YAML of every overlay."""
    yaml_module()
    out = tmp_path_factory.mktemp("rendered")
    proc = subprocess.run(["bash", str(VALIDATE)], env={**os.environ, "OUT_DIR": str(out)}, check=False,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        _required(proc.stderr.strip())
    return {"rc": proc.returncode, "output": proc.stdout + proc.stderr, "dir": out}


@pytest.fixture(scope="module")
def rendered(validation) -> dict[str, list[dict]]:
    yaml = yaml_module()
    result = {}
    for overlay in OVERLAYS:
        path = validation["dir"] / f"{overlay}.yaml"
        assert path.exists() and path.stat().st_size, f"overlay {overlay} did not render:\n{validation['output']}"
        result[overlay] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return result


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_file(docs: list[dict]) -> tuple[str, str]:
    """(key, TOML text) of the ConfigMap that the container's --config points at."""
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    args = container(docs)["args"]
    path = args[args.index("--config") + 1]
    for mount in container(docs)["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert "configMap" in volume, f"--config {path} is not on a ConfigMap volume"
            cm = next(c for c in objects(docs, "ConfigMap") if c["metadata"]["name"] == volume["configMap"]["name"])
            key = path[len(prefix):]
            assert key in cm["data"], f"--config {path}: the ConfigMap has no key {key}"
            return key, cm["data"][key]
    raise AssertionError(f"--config {path} is not under any volume mount")


def container_env(docs: list[dict], secret_value: str = "secret-from-the-secret") -> dict[str, str]:
    """The container's environment as the kubelet would set it (Secret values replaced by a stand-in)."""
    env = {}
    for var in container(docs).get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = secret_value
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = "hiddenstate-7f9c-abcde"  # e.g. metadata.name
        else:
            raise AssertionError(f"env {var['name']}: unsupported source {var['valueFrom']}")
    return env


def service_config(docs: list[dict], tmp_path: Path, monkeypatch) -> ServiceConfig:
    """The settings the pod would run with: the ConfigMap's file, loaded with the Deployment's environment."""
    key, text = config_file(docs)
    path = tmp_path / key
    path.write_text(text)
    for name in [n for n in os.environ if n.upper().startswith("HIDDENSTATE_")]:
        monkeypatch.delenv(name)
    for name, value in container_env(docs).items():
        monkeypatch.setenv(name, value)
    return load_service_config(path)


# --- validate.sh, generated files -------------------------------------------------------------------------


def test_every_overlay_renders_and_validates_against_the_schemas(validation):
    assert validation["rc"] == 0, validation["output"]
    for overlay in OVERLAYS:
        ok_line = re.search(rf"^ok +{overlay}: \d+ objects", validation["output"], flags=re.MULTILINE)
        assert ok_line, validation["output"]


def test_validate_uses_only_schemas_in_the_repository():
    text = VALIDATE.read_text()
    locations = re.findall(r'-schema-location "([^"]+)"', text)
    assert locations and all(loc.startswith("$ROOT/deploy/schemas/") for loc in locations)
    assert "ignore-missing-schemas" not in text, "a kind without a schema must fail, not pass unchecked"
    assert "-strict" in text


def test_prometheusrule_is_the_rule_files():
    """The PrometheusRule's groups are exactly the groups of deploy/prometheus/*.yml (no copy that can drift)."""
    yaml = yaml_module()
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    groups = [g for path in RULE_FILES for g in yaml.safe_load(path.read_text())["groups"]]
    assert groups, "no rule files in deploy/prometheus"
    assert rule["spec"]["groups"] == groups, (
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus: run python3 deploy/k8s/prometheusrule.py")
    proc = subprocess.run([sys.executable, str(K8S / "prometheusrule.py"), "--check"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_crd_schemas_are_generated_from_their_sources():
    yaml_module()
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "schemas" / "generate.py"), "--crds-only", "--check"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_kubernetes_schemas_are_generated_from_kubernetes_validate():
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is only needed to regenerate the schemas")
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "schemas" / "generate.py"), "--check"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- config keys and environment ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_keys_are_settings_and_load(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    _, text = config_file(docs)
    data = tomllib.loads(text)
    assert set(data) <= {"service", "detector"}, f"unknown tables {sorted(set(data) - {'service', 'detector'})}"
    unknown = set(data.get("service", {})) - set(ServiceConfig.model_fields) - {"detector"}
    assert not unknown, f"[service] keys that ServiceConfig does not have: {sorted(unknown)}"
    unknown = set(data.get("detector", {})) - set(DetectorConfig.model_fields)
    assert not unknown, f"[detector] keys that DetectorConfig does not have: {sorted(unknown)}"
    config = service_config(docs, tmp_path, monkeypatch)  # the service's own loader: types, ranges, cross-checks
    assert config.sasl_password is not None or config.sasl_mechanism is None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_variables_map_to_settings(rendered, overlay):
    sources = "\n".join(p.read_text() for p in [*(ROOT / "detector").glob("*.py"), *(ROOT / "consumers").glob("*.py")])
    read_directly = set(re.findall(r'os\.environ(?:\.get\(|\[)"(HIDDENSTATE_\w+)"', sources))
    allowed = {f"HIDDENSTATE_{f.upper()}" for f in ServiceConfig.model_fields if f != "detector"}
    allowed |= {f"HIDDENSTATE_{f.upper()}" for f in DetectorConfig.model_fields}
    allowed |= {f"HIDDENSTATE_DETECTOR__{f.upper()}" for f in DetectorConfig.model_fields}
    allowed |= read_directly
    names = {var["name"] for var in container(rendered[overlay]).get("env", [])}
    ours = {n for n in names if n.startswith("HIDDENSTATE_")}
    assert ours <= allowed, f"environment variables the service does not read: {sorted(ours - allowed)}"
    assert {"HIDDENSTATE_SASL_USERNAME", "HIDDENSTATE_SASL_PASSWORD"} <= ours
    for var in container(rendered[overlay])["env"]:
        if var["name"] in ("HIDDENSTATE_SASL_USERNAME", "HIDDENSTATE_SASL_PASSWORD"):
            assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_parse_with_the_serve_parser(rendered, overlay):
    from detector.cli import build_parser

    c = container(rendered[overlay])
    assert "command" not in c, "keep the image's ENTRYPOINT (hiddenstate serve): set args only"
    entrypoint = exec_form("ENTRYPOINT")
    args = build_parser().parse_args([*entrypoint[1:], *c["args"]])
    assert args.command == "serve" and args.config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_files_named_in_the_config_are_mounted(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(config, field)
        if path is None:
            continue
        mounts = [m for m in container(docs)["volumeMounts"] if str(path).startswith(m["mountPath"].rstrip("/") + "/")]
        assert mounts, f"{field}={path} is not under any volume mount"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
        name = str(path)[len(mounts[0]["mountPath"].rstrip("/")) + 1:]
        source = volume.get("secret") or volume.get("configMap")
        assert source is not None, f"{field}: mount {mounts[0]['mountPath']} is neither a Secret nor a ConfigMap"
        if source.get("items"):
            assert name in {i["path"] for i in source["items"]}, f"{field}={path}: not among the volume's items"


# --- ports, probes, termination -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_are_the_metrics_port(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    assert config.metrics_enabled
    assert config.metrics_address in ("0.0.0.0", "::"), "the endpoints must listen on the pod's address"
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": config.metrics_port}, (
        f"container ports {ports}, the service listens on {config.metrics_port}")

    def resolve(port):
        return ports.get(port, port) if isinstance(port, str) else port

    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert resolve(c[probe]["httpGet"]["port"]) == config.metrics_port, probe
    service = one(docs, "Service")
    assert len(service["spec"]["ports"]) == 1
    port = service["spec"]["ports"][0]
    assert resolve(port["targetPort"]) == config.metrics_port
    monitor = one(docs, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]
    policy = one(docs, "NetworkPolicy")
    ingress_ports = {resolve(p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {config.metrics_port}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_and_scrape_paths_are_served(rendered, overlay, small_model):
    from consumers.metrics import HttpEndpoints
    from consumers.service import ScoringService

    docs = rendered[overlay]
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    paths = {c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    paths |= {e.get("path", "/metrics") for e in one(docs, "ServiceMonitor")["spec"]["endpoints"]}
    service = ScoringService(ServiceConfig(metrics_port=0, detector=DetectorConfig(channels=1)), small_model)
    http = HttpEndpoints(service.metrics.registry, service.health, service.readiness)
    port = http.start("127.0.0.1", 0)
    try:
        for path in sorted(paths):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status in (200, 503), f"{path}: HTTP {status}: the service does not serve it"
    finally:
        http.stop()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_drain(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    # serve: up to grace_seconds for the batch, then what is left of it (at least 1 s) to flush and leave
    assert pod["terminationGracePeriodSeconds"] >= config.grace_seconds + 5


# --- security, resources ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_security_restricted(rendered, overlay):
    docs = rendered[overlay]
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    namespace = one(docs, "Namespace")
    assert deployment["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert pod.get("automountServiceAccountToken") is False
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged")
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
    for volume in pod["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"volume {volume['name']}: {kinds} not allowed by the restricted profile"
    # the image's writable paths are on an emptyDir
    env = env_of_final_stage()
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
              if "emptyDir" in next(v for v in pod["volumes"] if v["name"] == m["name"])}
    assert env["TMPDIR"] in mounts


def test_image_tag_is_the_project_version():
    yaml = yaml_module()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert base["spec"]["template"]["spec"]["containers"][0]["image"] == f"hiddenstate:{version}"
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        for image in kustomization.get("images", []):
            if image["name"] == "hiddenstate" and "newTag" in image:
                assert image["newTag"] == version, f"{overlay}: image tag {image['newTag']}, project {version}"


def test_deployment_leaves_replicas_to_keda():
    yaml = yaml_module()
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert "replicas" not in base["spec"], "KEDA owns the replica count; `replicas` would reset it on every apply"


# --- metrics ------------------------------------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)
    e = re.sub(r"\[[^\[\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    keywords = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                "bool", "inf", "nan"}
    names = set()
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(\s*\()?", e):
        if not m.group(2) and m.group(1) not in keywords:
            names.add(m.group(1))
    return names


def exported_names(small_model) -> set[str]:
    from consumers.service import ScoringService

    service = ScoringService(ServiceConfig(metrics_port=0, detector=DetectorConfig(channels=1)), small_model)
    names = set(EXPORTED_WHEN_RUNNING)
    for family in text_string_to_metric_families(service.metrics.exposition().decode()):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names.add(family.name)
        names |= {family.name + s for s in suffixes.get(family.type, [])}
        names |= {s.name for s in family.samples}
    return names


def test_metric_name_reader():
    expr = ('histogram_quantile(0.99, sum by (le, job) (rate(a_seconds_bucket{job="x"}[5m]))) / on (job) '
            'job:b:rate5m > bool 1e3 and time() - c_timestamp_seconds unless absent(d)')
    assert metric_names(expr) == {"a_seconds_bucket", "job:b:rate5m", "c_timestamp_seconds", "d"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheusrule_reads_only_metrics_the_service_exports(rendered, overlay, small_model):
    rules = [r for g in one(rendered[overlay], "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    used = set().union(*(metric_names(r["expr"]) for r in rules)) - recorded - PROMETHEUS_OWN
    missing = used - exported_names(small_model)
    assert not missing, f"the PrometheusRule reads metrics the service does not export: {sorted(missing)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scrape_job_is_the_one_the_alerts_select(rendered, overlay):
    """ServiceMonitor's jobLabel makes job="hiddenstate", which `HiddenstateDown` (up{job=...}) selects."""
    docs = rendered[overlay]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]] if "jobLabel" in monitor["spec"] \
        else service["metadata"]["name"]
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    selected = {m for r in rules for m in re.findall(r'\bjob="([^"]+)"', r["expr"])}
    assert selected <= {job}, f"rules select job {sorted(selected)}, the scrape job is {job!r}"


# --- Kafka: topics, KEDA, network -------------------------------------------------------------------


def topics_by_name(docs: list[dict]) -> dict[str, dict]:
    return {t["spec"].get("topicName", t["metadata"]["name"]): t for t in objects(docs, "KafkaTopic")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_the_config(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    topics = topics_by_name(docs)
    for name in [*config.input_topics, config.scores_topic, config.alerts_topic, config.dead_letter_topic]:
        assert name in topics, f"no KafkaTopic for {name}"
    clusters = {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()}
    namespaces = {t["metadata"]["namespace"] for t in topics.values()}
    assert len(clusters) == 1 and len(namespaces) == 1, "all topics belong to one Strimzi cluster and namespace"
    changelogs = [t for t in topics.values() if t["spec"].get("config", {}).get("cleanup.policy") == "compact"]
    assert len(changelogs) == 1, "one compacted changelog topic"
    input_partitions = {topics[name]["spec"]["partitions"] for name in config.input_topics}
    assert changelogs[0]["spec"]["partitions"] in input_partitions, "the changelog is co-partitioned with the input"
    for t in topics.values():
        isr = int(t["spec"].get("config", {}).get("min.insync.replicas", 1))
        assert isr <= t["spec"]["replicas"], f"{t['metadata']['name']}: min.insync.replicas > replicas"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_the_configured_group_up_to_the_input_partitions(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    scaled = one(docs, "ScaledObject")
    deployment = one(docs, "Deployment")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"].get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "kafka" for t in triggers)
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(config.input_topics), "one trigger per input"
    auths = {a["metadata"]["name"]: a for a in objects(docs, "TriggerAuthentication")}
    for t in triggers:
        meta = t["metadata"]
        unknown = set(meta) - KEDA_KAFKA_METADATA
        assert not unknown, f"unknown kafka scaler parameters {sorted(unknown)}"
        assert meta["consumerGroup"] == config.group_id
        assert meta["bootstrapServers"] == config.bootstrap_servers
        assert meta.get("offsetResetPolicy", "latest") == config.auto_offset_reset
        assert meta.get("allowIdleConsumers", "false") == "false"
        keda_sasl = {None: "none", "PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256",
                     "SCRAM-SHA-512": "scram_sha512"}[config.sasl_mechanism]
        assert meta.get("sasl", "none") == keda_sasl
        assert meta.get("tls", "disable") == ("enable" if config.security_protocol.endswith("SSL") else "disable")
        if "authenticationRef" in t:
            auth = auths[t["authenticationRef"]["name"]]
            params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
            assert params <= KEDA_KAFKA_AUTH
            if config.sasl_mechanism:
                assert {"username", "password"} <= params
    partitions = sum(topics_by_name(docs)[name]["spec"]["partitions"] for name in config.input_topics)
    assert scaled["spec"]["maxReplicaCount"] == partitions, "maxReplicaCount must be the input topics' partitions"
    assert 1 <= scaled["spec"].get("minReplicaCount", 0) <= scaled["spec"]["maxReplicaCount"], (
        "minReplicaCount >= 1: scaling to zero would drop every sensor's state")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_secret_is_one_and_consistent(rendered, overlay):
    """The Deployment and KEDA read the same Secret, with the keys the docs tell operators to create."""
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    used: set[tuple[str, str]] = set()
    for var in pod["containers"][0].get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            used.add((ref["name"], ref["key"]))
    for volume in pod["volumes"]:
        if "secret" in volume:
            used |= {(volume["secret"]["secretName"], i["key"]) for i in volume["secret"].get("items", [])}
    for auth in objects(docs, "TriggerAuthentication"):
        used |= {(ref["name"], ref["key"]) for ref in auth["spec"].get("secretTargetRef", [])}
    assert len({name for name, _ in used}) == 1, f"one Secret for the Kafka credentials, found {sorted(used)}"
    documented = secret_in_docs()
    assert documented == used, f"README/docs say to create {sorted(documented)}, the manifests read {sorted(used)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_reaches_the_configured_brokers(rendered, overlay, tmp_path, monkeypatch):
    docs = rendered[overlay]
    config = service_config(docs, tmp_path, monkeypatch)
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress = policy["spec"]["egress"]
    dns = [r for r in egress if {p["port"] for p in r["ports"]} == {53}]
    assert dns and {p["protocol"] for p in dns[0]["ports"]} == {"UDP", "TCP"}, "DNS egress (UDP and TCP 53)"
    topic = next(iter(objects(docs, "KafkaTopic")))
    cluster, kafka_ns = topic["metadata"]["labels"]["strimzi.io/cluster"], topic["metadata"]["namespace"]
    for server in config.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        assert host.startswith(f"{cluster}-kafka-bootstrap.{kafka_ns}."), (
            f"bootstrap {host} is not the bootstrap Service of the topics' Strimzi cluster {kafka_ns}/{cluster}")
        allowed = [r for r in egress if int(port) in {p["port"] for p in r["ports"]}]
        assert allowed, f"no egress rule for the Kafka port {port}"
        peers = [peer for r in allowed for peer in r["to"]]
        assert any(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == kafka_ns
                   and p.get("podSelector", {}).get("matchLabels", {}).get("strimzi.io/cluster") == cluster
                   for p in peers), f"egress on {port} does not reach the pods of {kafka_ns}/{cluster}"


# --- README and docs ----------------------------------------------------------------------------------


def _sections() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    ops = (ROOT / "docs" / "operations.md").read_text()
    out = []
    m = re.search(r"^## Run on Kubernetes\n(.*?)(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
    assert m, 'README.md has no "## Run on Kubernetes" section'
    out.append(m.group(1))
    m = re.search(r"^## Deploying on Kubernetes\n(.*?)(?=^## |\Z)", ops, flags=re.MULTILINE | re.DOTALL)
    assert m, 'docs/operations.md has no "## Deploying on Kubernetes" section'
    out.append(m.group(1))
    return out


def secret_in_docs() -> set[tuple[str, str]]:
    """(secret, key) pairs of the `kubectl create secret generic` commands in README and docs/operations.md."""
    found: set[tuple[str, str]] = set()
    for text in _sections():
        for m in re.finditer(r"kubectl(?: -n \S+)? create secret generic (\S+)((?:\s*\\?\n?\s*--from-\S+)+)", text):
            name = m.group(1)
            for key in re.findall(r"--from-(?:literal|file)=([^=\s]+)", m.group(2)):
                found.add((name, key))
    return found


def test_docs_name_only_paths_and_overlays_that_exist():
    for text in _sections():
        for path in set(re.findall(r"\b(deploy/[\w./-]+\w)", text)):
            assert (ROOT / path).exists(), f"the docs name {path}, which does not exist"
        for overlay in re.findall(r"deploy/k8s/overlays/(\w+)", text):
            assert overlay in OVERLAYS
    assert "docker build -f deploy/Dockerfile" in _sections()[0]


# --- end to end: the container's command, args, env and read-only root, against a real broker -----------


def _toml(data: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    return "".join(f"[{table}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in rows.items()) + "\n"
                   for table, rows in data.items())


READ_ONLY_WRAPPER = r"""
set -eu
stage=$1; shift
mount --make-rprivate /
# the ConfigMap volume at its mountPath: a copy of its top directory (e.g. /etc) with the file added,
# staged on a tmpfs on the empty /srv and bound over the original (this namespace only)
top=/$(echo "$CONFIG_DIR" | cut -d/ -f2)
mount -t tmpfs -o size=64m,mode=0755 tmpfs /srv
cp -a "$top" /srv/top
mkdir -p "/srv/top${CONFIG_DIR#"$top"}"
cp "$stage/config/"* "/srv/top${CONFIG_DIR#"$top"}/"
mount --bind /srv/top "$top"
# the emptyDir on /tmp; what this test runs from and lives under /tmp (a checkout there) is bound back in
mkdir /srv/oldtmp
mount --bind /tmp /srv/oldtmp
mount -t tmpfs -o size=256m,mode=1777 tmpfs /tmp
for p in $KEEP_UNDER_TMP; do
    mkdir -p "$p"
    mount --bind "/srv/oldtmp${p#/tmp}" "$p"
done
for target in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
    case "$target" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|/tmp) continue ;; esac
    mount -o remount,bind,ro "$target" 2>/dev/null || true
done
for p in $MUST_BE_READ_ONLY; do
    if touch "$p/.hiddenstate-rw-probe" 2>/dev/null; then
        rm -f "$p/.hiddenstate-rw-probe"
        echo "writable: $p" >&2
        exit 97
    fi
done
exec "$@"
"""


def _read_only_root_available(config_dir: str) -> str | None:
    """Why a read-only mount namespace cannot be made here, or None if it can."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (a private mount namespace)"
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    if not Path("/srv").is_dir() or any(Path("/srv").iterdir()):
        return "/srv is not an empty directory to stage the ConfigMap volume in"
    if not config_dir.startswith("/") or not Path("/" + config_dir.split("/")[1]).is_dir():
        return f"the top directory of {config_dir} does not exist here to bind the ConfigMap volume over"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --make-rprivate / && mount -t tmpfs tmpfs /srv"],
                           check=False, capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"no mount namespace here: {probe.stderr.strip()}"


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_container_runs_as_the_manifests_say(rendered, kafka_bootstrap, tmp_path):  # noqa: F811 - the fixture
    """The image's command with the dev overlay's args, env and config: healthy, ready, scores, stops in time."""
    docs = rendered["dev" if "dev" in OVERLAYS else OVERLAYS[0]]
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    script = shutil.which("hiddenstate", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the hiddenstate console script is not installed in this environment (pip install -e .)")

    # the overlay's config, pointed at the test broker: plaintext, throwaway topics and group
    key, text = config_file(docs)
    data = tomllib.loads(text)
    service = data["service"]
    for field in ("security_protocol", "sasl_mechanism", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        service.pop(field, None)
    topics = {"in": unique_name("k8s-in"), "scores": unique_name("k8s-scores"), "alerts": unique_name("k8s-alerts"),
              "dlq": unique_name("k8s-dlq")}
    service.update(bootstrap_servers=kafka_bootstrap, input_topics=[topics["in"]], scores_topic=topics["scores"],
                   alerts_topic=topics["alerts"], dead_letter_topic=topics["dlq"], group_id=unique_name("k8s-group"),
                   start_timeout_seconds=120.0)
    port = int(container_env(docs).get("HIDDENSTATE_METRICS_PORT",
                                       service.get("metrics_port", ServiceConfig.model_fields["metrics_port"].default)))
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"port {port} (the container's metrics port) is in use on this machine")
    partitions = topics_by_name(docs)[tomllib.loads(text)["service"]["input_topics"][0]]["spec"]["partitions"]
    asyncio.run(create_topics(kafka_bootstrap, {topics["in"]: partitions, topics["scores"]: 1, topics["alerts"]: 1,
                                                topics["dlq"]: 1}))

    args = list(c["args"])
    config_path = args[args.index("--config") + 1]
    config_dir = config_path.rsplit("/", 1)[0]
    stage = tmp_path / "stage"
    (stage / "config").mkdir(parents=True)
    (stage / "config" / key).write_text(_toml(data))

    # the image's ENV (its PATH is the venv's bin: here, the one of this interpreter) and the container's env
    env = {**env_of_final_stage(), **container_env(docs), "PATH": f"{Path(script).parent}:{os.environ['PATH']}"}
    command = [script, *exec_form("ENTRYPOINT")[1:], *args]
    why_not = _read_only_root_available(config_dir)
    if why_not is None:
        needed = sorted({ROOT, Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent,
                         Path(script).parent}, key=lambda p: len(p.parts))
        under_tmp = []
        for path in needed:
            if path.is_relative_to("/tmp") and not any(path.is_relative_to(kept) for kept in under_tmp):
                under_tmp.append(path)
        env.update(CONFIG_DIR=config_dir, KEEP_UNDER_TMP=" ".join(map(str, under_tmp)),
                   MUST_BE_READ_ONLY=" ".join(["/", *map(str, needed), "/srv", config_dir]))
        command = ["unshare", "-m", "sh", "-c", READ_ONLY_WRAPPER, "sh", str(stage), *command]
        emptydir = [m["mountPath"] for m in c["volumeMounts"]
                    if "emptyDir" in next(v for v in pod["volumes"] if v["name"] == m["name"])]
        assert emptydir == ["/tmp"], "the wrapper models the emptyDir on /tmp"
    else:
        args[args.index("--config") + 1] = str(stage / "config" / key)
        command = [script, *exec_form("ENTRYPOINT")[1:], *args]
        env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), MPLCONFIGDIR=str(tmp_path / "mpl"))

    log_path = tmp_path / "serve.log"
    launched = time.time()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT)
    try:
        def still_running() -> None:
            if proc.poll() is None:
                return
            text = log_path.read_text()
            if "Address already in use" in text:  # a shared machine: another process took the port meanwhile
                pytest.skip(f"port {port} was taken by another process on this machine")
            raise AssertionError(f"serve exited ({proc.returncode}):\n{text[-3000:]}")

        def wait_for(path: str, timeout: float) -> bytes:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                still_running()
                with contextlib.suppress(OSError):
                    status, body = _get(port, path)
                    if status == 200:
                        return body
                time.sleep(0.25)
            raise AssertionError(f"{path} not 200 within {timeout}s:\n{log_path.read_text()[-3000:]}")

        startup = c["startupProbe"]
        wait_for(startup["httpGet"]["path"], startup["periodSeconds"] * startup["failureThreshold"])
        wait_for(c["readinessProbe"]["httpGet"]["path"], 90)
        # the answers came from this process, not from another one on the same port
        exposition = wait_for("/metrics", 10).decode()
        still_running()
        started = next(s.value for f in text_string_to_metric_families(exposition) for s in f.samples
                       if s.name == "process_start_time_seconds")
        assert started >= launched - 5, "/metrics is answered by another process than the one started here"

        readings = [(f"pump-{s}".encode(), orjson.dumps({"sensor_id": f"pump-{s}", "ts": 1_700_000_000 + t,
                                                          "value": 1.0 + 0.1 * s + 0.01 * t}))
                    for t in range(5) for s in range(4)]
        asyncio.run(produce(kafka_bootstrap, topics["in"], readings))
        deadline = time.monotonic() + 60
        scores: list = []
        while time.monotonic() < deadline and len(scores) < len(readings):
            scores = asyncio.run(read_all(kafka_bootstrap, topics["scores"]))
            time.sleep(0.5)
        assert len(scores) == len(readings), f"{len(scores)} scores:\n{log_path.read_text()[-3000:]}"
        assert b"hiddenstate_readings_scored_total" in wait_for("/metrics", 10)

        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=pod["terminationGracePeriodSeconds"])
        elapsed = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert rc == 0, f"exit status {rc}:\n{log[-3000:]}"
    assert elapsed < pod["terminationGracePeriodSeconds"]
    assert "Read-only file system" not in log and "writable:" not in log, log[-3000:]
    for line in (ln for ln in log.splitlines() if ln.startswith("{")):
        orjson.loads(line)  # HIDDENSTATE_LOG_FORMAT=json: every record is one JSON object
    if why_not is not None:
        pytest.skip(f"ran, but not on a read-only root filesystem: {why_not}")
