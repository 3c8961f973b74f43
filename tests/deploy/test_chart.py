"""The helm chart without a cluster: Helm's own engine renders and lints it, every manifest is
validated against the Kubernetes schemas, and the rendered broker.toml passes check-config."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).parents[2] / "helm" / "mka1-token-broker"
KUBERNETES = "1.30.0"
VALUES = {
    "default": {},
    "full": yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text()),
    "single": yaml.safe_load((CHART / "ci" / "single-replica-values.yaml").read_text()),
    "shared-claim": {
        "replicaCount": 3,
        "audit": {
            "storage": "persistentVolumeClaim",
            "persistence": {"accessMode": "ReadWriteMany"},
        },
    },
}


CLIENT = {"id": "x", "keySha256": "a" * 64, "audiences": ["https://a.example"]}
ISSUER = {
    "id": "idp",
    "issuer": "https://idp.example",
    "audience": "mka1-token-broker",
    "audiences": ["https://a.example"],
}
PROXY = {"id": "proxy", "cidrs": ["10.0.0.0/8"], "audiences": ["https://a.example"]}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values, name="tokens", namespace="broker", is_install=True)
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


@pytest.mark.parametrize("name", sorted(VALUES))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUES[name], strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_manifest_is_valid_kubernetes(name: str) -> None:
    manifests = render(VALUES[name])
    for manifest in manifests:
        if manifest["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD: no upstream schema; check its shape by hand.
            if manifest["kind"] == "ServiceMonitor":
                assert manifest["spec"]["endpoints"][0]["path"] == "/metrics"
            else:
                assert manifest["kind"] == "PrometheusRule"
                assert all(
                    {"alert", "expr"} <= set(r) for r in manifest["spec"]["groups"][0]["rules"]
                )
            continue
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    kinds = {manifest["kind"] for manifest in manifests}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds
    if name == "full":
        assert {
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
            "Ingress",
            "PersistentVolumeClaim",
        } <= kinds


@pytest.mark.parametrize("name", sorted(VALUES))
def test_rendered_config_passes_check_config(name: str, tmp_path: Path) -> None:
    config = by_kind(render(VALUES[name]), "ConfigMap")["data"]["broker.toml"]
    path = tmp_path / "broker.toml"
    path.write_text(config)
    result = subprocess.run(
        # The secrets it names exist only in the cluster.
        [sys.executable, "-m", "broker", "check-config", str(path), "--skip-secrets"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr + config
    if name == "full":
        assert 'key_sha256 = "5f8ae646' in config
        assert "[[issuers]]" in config
        assert "[[proxies]]" in config
        assert 'api_key_next_file = "/run/secrets/mka1-next/api-key"' in config


@pytest.mark.parametrize("name", sorted(VALUES))
def test_the_pod_is_hardened_and_takes_secrets_from_secrets(name: str) -> None:
    manifests = render(VALUES[name])
    deployment = by_kind(manifests, "Deployment")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    assert len(pod["metadata"]["annotations"]["checksum/config"]) == 64
    assert spec["topologySpreadConstraints"]
    assert spec["automountServiceAccountToken"] is False
    secrets = {v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    assert "mka1-api-key" in secrets
    labels = deployment["metadata"]["labels"]
    for label in (
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
    ):
        assert label in labels
    # No Secret is rendered: the key material stays in the Secrets the operator made.
    assert "Secret" not in {manifest["kind"] for manifest in manifests}


def test_a_changed_config_changes_the_checksum() -> None:
    first = by_kind(render({}), "Deployment")
    second = by_kind(render({"broker": {"tokens": {"defaultExpiresIn": 900}}}), "Deployment")
    annotation = "checksum/config"
    assert (
        first["spec"]["template"]["metadata"]["annotations"][annotation]
        != second["spec"]["template"]["metadata"]["annotations"][annotation]
    )


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": "two"},
        {"broker": {"upstream": {"apiKey": "mka1_in_clear"}}},
        {"broker": {"clients": [{"id": "x", "keySha256": "nothex", "audiences": ["https://a"]}]}},
        {"audit": {"storage": "s3"}},
        {"audit": {"rotateSeconds": 0.001}},
        {"unknownTopLevel": True},
        # Typos in entries the broker would refuse at start (a crash loop otherwise).
        {"broker": {"clients": [CLIENT | {"maxExpiresIN": 900}]}},
        {"broker": {"clients": [CLIENT | {"audience": ["https://a.example"]}]}},
        {"broker": {"clients": [CLIENT | {"roles": ["superuser"]}]}},
        {"broker": {"clients": [CLIENT | {"maxExpiresIn": 100}]}},
        {"broker": {"issuers": [ISSUER | {"jwksURL": "https://idp.example/jwks"}]}},
        {"broker": {"issuers": [ISSUER | {"algorithms": ["HS256"]}]}},
        {"broker": {"proxies": [PROXY | {"userheader": "X-User"}]}},
        {"broker": {"rateLimits": {"perCaller": {"ratePerSecond": 1, "burts": 2}}}},
        {"broker": {"upstream": {"timeoutSecs": 3}}},
        {"broker": {"cache": {"maxEntries": 0}}},
    ],
)
def test_the_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema(values)


def test_well_formed_entries_pass_the_schema() -> None:
    values = {"broker": {"clients": [CLIENT], "issuers": [ISSUER], "proxies": [PROXY]}}
    helm.Chart.load(CHART).validate_schema(values)


def test_the_generated_schema_has_not_drifted() -> None:
    import json

    from broker.config_schema import definitions

    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed["definitions"]["generated"] == definitions(), (
        "values.schema.json is stale: run `make chart-schema` and commit it"
    )


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 2, "audit": {"storage": "persistentVolumeClaim"}},
        {
            "replicaCount": 1,
            "autoscaling": {"enabled": True},
            "audit": {"storage": "persistentVolumeClaim"},
        },
    ],
)
def test_a_read_write_once_claim_for_several_replicas_does_not_render(
    values: dict[str, Any],
) -> None:
    with pytest.raises(Exception, match="ReadWriteOnce claim serves one replica only"):
        render(values)


def test_probes_and_metrics_use_the_telemetry_port_and_the_ingress_the_api() -> None:
    manifests = render(VALUES["full"])
    (container,) = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["port"] == "telemetry"
    assert container["readinessProbe"]["httpGet"]["port"] == "telemetry"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "telemetry": 9090}
    service_ports = {p["name"] for p in by_kind(manifests, "Service")["spec"]["ports"]}
    assert service_ports == {"http", "telemetry"}
    assert by_kind(manifests, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "telemetry"
    for rule in by_kind(manifests, "Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["port"]["name"] == "http"
    config = by_kind(manifests, "ConfigMap")["data"]["broker.toml"]
    assert "telemetry_port = 9090" in config
    policy = by_kind(manifests, "NetworkPolicy")["spec"]
    telemetry_rule = next(r for r in policy["ingress"] if r["ports"][0]["port"] == 9090)
    assert telemetry_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    api_server = next(
        rule for rule in policy["egress"] if {"port": 6443, "protocol": "TCP"} in rule["ports"]
    )
    assert {"ipBlock": {"cidr": "10.96.0.1/32"}} in api_server["to"]


def test_the_extension_points_render() -> None:
    manifests = render(VALUES["full"])
    deployment = by_kind(manifests, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["priorityClassName"] == "business-critical"
    assert {"name": "TZ", "value": "UTC"} in container["env"]
    assert container["envFrom"] == [{"configMapRef": {"name": "broker-extra-env"}}]
    assert "corporate-ca" in {volume["name"] for volume in spec["volumes"]}
    assert "/etc/ssl/corporate" in {mount["mountPath"] for mount in container["volumeMounts"]}
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 10
    annotations = by_kind(manifests, "Service")["metadata"]["annotations"]
    assert annotations == {"service.kubernetes.io/topology-mode": "Auto"}
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The broker's grace fits inside the pod's, after the preStop sleep.
    config = by_kind(manifests, "ConfigMap")["data"]["broker.toml"]
    assert "shutdown_grace_seconds = 30" in config
    projected = next(v for v in spec["volumes"] if v["name"] == "cluster-issuer")["projected"]
    assert projected["sources"][0]["serviceAccountToken"]["path"] == "token"
    assert projected["sources"][1]["configMap"]["name"] == "kube-root-ca.crt"


@pytest.mark.parametrize(("name", "expected"), [("default", True), ("single", False)])
def test_a_disruption_budget_by_default_when_more_than_one_replica_runs(
    name: str, expected: bool
) -> None:
    kinds = {manifest["kind"] for manifest in render(VALUES[name])}
    assert ("PodDisruptionBudget" in kinds) is expected


def test_stdout_audit_storage_configures_the_stdout_sink() -> None:
    config = by_kind(render({"audit": {"storage": "stdout"}}), "ConfigMap")["data"]["broker.toml"]
    assert 'sink = "stdout"' in config


def test_a_postgresql_audit_store_is_wired_from_its_secret() -> None:
    values = {
        "audit": {"store": {"existingSecret": "audit-db-app", "mode": "sync", "retentionDays": 90}}
    }
    manifests = render(values)
    config = by_kind(manifests, "ConfigMap")["data"]["broker.toml"]
    assert (
        '[audit.store]\nbackend = "postgresql"\nurl_file = "/run/secrets/audit-store/url"' in config
    )
    assert 'mode = "sync"' in config
    assert "retention_days = 90" in config
    # The store is the trail of record: a pod's volume does not fill with shipped files.
    assert "prune_shipped_files = true" in config
    pod = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "audit-store-url"]
    assert volume["secret"]["secretName"] == "audit-db-app"
    assert volume["secret"]["items"] == [{"key": "uri", "path": "url"}]
    mounts = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "audit-store-url",
        "mountPath": "/run/secrets/audit-store",
        "readOnly": True,
    } in mounts
    # Without it the store is each pod's embedded SQLite: no [audit.store] table at all.
    assert "[audit.store]" not in by_kind(render({}), "ConfigMap")["data"]["broker.toml"]


def test_a_store_with_stdout_audit_storage_does_not_render() -> None:
    with pytest.raises(Exception, match=r"audit\.store\.existingSecret needs"):
        render({"audit": {"storage": "stdout", "store": {"existingSecret": "db"}}})


def test_a_shared_store_is_wired_from_its_secrets() -> None:
    values = {
        "sharedState": {"existingSecret": "valkey-url", "encryptionKeySecret": "shared-key"},
        "autoscaling": {"enabled": True, "maxReplicas": 7},
    }
    manifests = render(values)
    config = by_kind(manifests, "ConfigMap")["data"]["broker.toml"]
    assert 'url_file = "/run/secrets/shared-state/url"' in config
    assert "replicas = 7" in config
    pod = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets["shared-state-url"] == "valkey-url"
    assert secrets["shared-state-key"] == "shared-key"
    with pytest.raises(Exception, match=r"encryptionKeySecret is required"):
        render({"sharedState": {"existingSecret": "valkey-url"}})
    assert "[shared_state]" not in by_kind(render({}), "ConfigMap")["data"]["broker.toml"]


@pytest.mark.parametrize("step", ["Next", "Previous"])
def test_a_key_being_changed_is_mounted_from_the_same_secret_and_named_in_the_config(
    step: str,
) -> None:
    shared = {"existingSecret": "valkey-url", "encryptionKeySecret": "shared-key"}
    manifests = render({"sharedState": shared | {f"encryptionKey{step}SecretKey": "other"}})
    config = by_kind(manifests, "ConfigMap")["data"]["broker.toml"]
    path = f"/run/secrets/shared-state-key/{step.lower()}"
    assert f'encryption_key_{step.lower()}_file = "{path}"' in config
    pod = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    (key,) = [v["secret"] for v in pod["volumes"] if v["name"] == "shared-state-key"]
    assert key["items"] == [
        {"key": "key", "path": "key"},
        {"key": "other", "path": step.lower()},
    ]
    unchanged = by_kind(render({"sharedState": shared}), "ConfigMap")["data"]["broker.toml"]
    assert "encryption_key_next" not in unchanged
    assert "encryption_key_previous" not in unchanged


@pytest.mark.parametrize("access", ["ReadWriteOnce", "ReadWriteOncePod"])
def test_a_pod_on_a_single_node_claim_is_replaced_by_stopping_it_first(access: str) -> None:
    # A rolling update starts the new pod before the old one stops (maxUnavailable 0): a
    # claim one node (or one pod) may hold kept the new pod from starting, for ever.
    values = {
        "replicaCount": 1,
        "audit": {"storage": "persistentVolumeClaim", "persistence": {"accessMode": access}},
    }
    deployment = by_kind(render(values), "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # Otherwise the rolling update as configured.
    shared = {
        "audit": {
            "storage": "persistentVolumeClaim",
            "persistence": {"accessMode": "ReadWriteMany"},
        }
    }
    for other in ({}, shared):
        assert by_kind(render(other), "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"


def test_pods_sharing_a_claim_keep_no_embedded_store_on_it() -> None:
    # SQLite's write-ahead log cannot be shared by pods on different nodes over a network
    # filesystem: every pod opened the same audit-store.sqlite3 on the shared claim.
    values = VALUES["shared-claim"]
    config = by_kind(render(values), "ConfigMap")["data"]["broker.toml"]
    store = config.split("[audit.store]\n", 1)[1].split("\n\n", 1)[0]
    assert store.splitlines()[-1] == 'backend = "none"'
    # With a PostgreSQL store, that one; on a pod's own volume, its embedded SQLite.
    with_store = values | {"audit": values["audit"] | {"store": {"existingSecret": "db-app"}}}
    config = by_kind(render(with_store), "ConfigMap")["data"]["broker.toml"]
    assert 'backend = "postgresql"' in config
    own: dict[str, Any]
    for own in ({}, VALUES["single"]):
        assert "[audit.store]" not in by_kind(render(own), "ConfigMap")["data"]["broker.toml"]


_STORES = {
    "audit": {"store": {"existingSecret": "audit-db-app"}},
    "sharedState": {"existingSecret": "valkey-url", "encryptionKeySecret": "shared-key"},
}
_POLICY = {"enabled": True, "upstreamCidrs": ["203.0.113.0/24"]}


@pytest.mark.parametrize(
    ("store", "named"),
    [("audit", "networkPolicy.auditStore.to"), ("sharedState", "networkPolicy.sharedState.to")],
)
def test_a_network_policy_that_would_cut_a_configured_store_off_does_not_render(
    store: str, named: str
) -> None:
    # Its egress rules named only DNS, the upstream and the JWKS hosts: with a PostgreSQL
    # store or a shared store configured, every pod lost it (shipping, or the bars and the
    # limits: a replica that never reads the bars issues nothing).
    with pytest.raises(Exception, match=named.replace(".", r"\.")):
        render({store: _STORES[store], "networkPolicy": _POLICY})


def test_a_network_policy_lets_the_pods_reach_the_stores_it_is_told_of() -> None:
    database = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}}}
    valkey = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "valkey"}}}
    values = _STORES | {
        "networkPolicy": _POLICY
        | {"auditStore": {"to": [database]}, "sharedState": {"to": [valkey], "ports": [6380]}}
    }
    egress = by_kind(render(values), "NetworkPolicy")["spec"]["egress"]
    assert {"to": [database], "ports": [{"port": 5432, "protocol": "TCP"}]} in egress
    assert {"to": [valkey], "ports": [{"port": 6380, "protocol": "TCP"}]} in egress
    # Neither, without a store configured: no rule that names one.
    plain = by_kind(render({"networkPolicy": _POLICY}), "NetworkPolicy")["spec"]["egress"]
    assert all(database not in rule.get("to", []) for rule in plain)


def test_the_ingress_by_default_takes_browsers_to_the_token_routes_only() -> None:
    # It took "/" to the broker: the admin's kill switch and the auditor's trail faced the
    # internet with it, each behind a key alone.
    ingress = by_kind(render({"ingress": {"enabled": True}}), "Ingress")
    [rule] = ingress["spec"]["rules"]
    assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/tokens", "Prefix")]


@pytest.mark.parametrize(
    ("storage", "prune", "expected"),
    [
        ("emptyDir", None, "true"),
        ("persistentVolumeClaim", None, "false"),
        ("persistentVolumeClaim", True, "true"),
        ("emptyDir", False, "false"),
    ],
)
def test_shipped_files_are_pruned_by_default_only_from_a_pods_own_emptydir(
    storage: str, prune: bool | None, expected: str
) -> None:
    # An emptyDir fills and gets its pod evicted; a claim's files were kept on purpose.
    values = {
        "replicaCount": 1,
        "audit": {
            "storage": storage,
            "store": {"existingSecret": "db", "pruneShippedFiles": prune},
        },
    }
    config = by_kind(render(values), "ConfigMap")["data"]["broker.toml"]
    assert f"prune_shipped_files = {expected}\n" in config


@pytest.mark.parametrize(("fewest", "expected"), [(1, False), (2, True)])
def test_an_autoscaler_that_may_run_one_replica_gets_no_disruption_budget(
    fewest: int, expected: bool
) -> None:
    # minAvailable 1 over a single replica refuses every eviction: a node drain waited on
    # the pod for ever whenever the autoscaler was down to one.
    values = {"replicaCount": 1, "autoscaling": {"enabled": True, "minReplicas": fewest}}
    kinds = {manifest["kind"] for manifest in render(values)}
    assert ("PodDisruptionBudget" in kinds) is expected


def test_every_alert_reads_metrics_the_broker_exports_for_this_release_only() -> None:
    """An alert on a metric no broker exports (a typo, a rename) never fires: each name an
    alert reads is one the broker's registry exposes, each label value one it uses, and each
    selects this release's pods in its namespace only."""
    from prometheus_client import generate_latest

    from broker.metrics import Metrics
    from broker.upstream import FailureKind

    rule = by_kind(render(VALUES["full"]), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    [group] = rule["spec"]["groups"]
    exported = {
        line.split()[2]
        for line in generate_latest(Metrics().registry).decode().splitlines()
        if line.startswith("# TYPE ")
    }
    kinds = set(typing.get_args(FailureKind))
    for alert in group["rules"]:
        expr = alert["expr"]
        names = re.findall(r"\b(broker_[a-z_]+)\{", expr)
        assert names, alert["alert"]
        for name in names:
            assert name in exported, (alert["alert"], name)
        selector = 'namespace="broker", pod=~"tokens-mka1-token-broker-[a-z0-9]+-[a-z0-9]+"'
        assert selector in expr, alert["alert"]
        for values in re.findall(r'kind=~"([^"]+)"', expr):
            assert set(values.split("|")) <= kinds, alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning")
    assert len(group["rules"]) == 7
    assert "PrometheusRule" not in {m["kind"] for m in render({})}
