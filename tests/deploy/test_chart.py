"""The helm chart without a cluster: Helm's own engine renders and lints it, every manifest is
validated against the Kubernetes schemas, and the rendered broker.toml passes check-config."""

from __future__ import annotations

import subprocess
import sys
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
}


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
            assert manifest["spec"]["endpoints"][0]["path"] == "/metrics"
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
        {"unknownTopLevel": True},
    ],
)
def test_the_values_schema_refuses_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).validate_schema(values)


def test_stdout_audit_storage_configures_the_stdout_sink() -> None:
    config = by_kind(render({"audit": {"storage": "stdout"}}), "ConfigMap")["data"]["broker.toml"]
    assert 'sink = "stdout"' in config
