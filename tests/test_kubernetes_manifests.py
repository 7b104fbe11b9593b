"""deploy/kubernetes/ rendered offline and every object schema-checked against the
Kubernetes API of a pinned version (kubernetes-validate ships the schemas; strict: an
unknown field is an error). The render is done here (the subset of kustomize the
manifests use: resources, namespace, labels, images); where ``kubectl`` is installed its
``kubectl kustomize`` must render the same objects."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ["base", "with-databases"]
# Created by the admin (docs/kubernetes.md), never part of the manifests.
ADMIN_SECRETS = {"adaptrain-secrets", "adaptrain-join-token"}


def render(directory: Path) -> list[dict]:
    """What ``kustomize build directory`` gives for the features these manifests use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
    }
    assert not unknown, f"render() does not implement kustomize's {unknown}"
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    objects = copy.deepcopy(objects)
    namespace = kustomization.get("namespace")
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if namespace and obj["kind"] != "Namespace":
            meta["namespace"] = namespace
        if namespace and obj["kind"] == "RoleBinding":
            # kustomize puts a binding's service accounts in the namespace too.
            for subject in obj.get("subjects", []):
                if subject["kind"] == "ServiceAccount" and not subject.get("namespace"):
                    subject["namespace"] = namespace
        for entry in kustomization.get("labels", []):
            meta.setdefault("labels", {}).update(entry["pairs"])
        for image in kustomization.get("images", []):
            for pod in _pod_specs(obj):
                for c in pod.get("containers", []) + pod.get("initContainers", []):
                    if c["image"] == image["name"]:
                        c["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def _pod_specs(obj: dict) -> list[dict]:
    template = obj.get("spec", {}).get("template")
    return [template["spec"]] if template else []


def _key(obj: dict) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_pinned_kubernetes_api(overlay):
    objects = render(DEPLOY / overlay)
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{overlay}: {_key(obj)} is not valid Kubernetes {KUBERNETES_VERSION}: {exc.message}"
            )


def test_the_validator_refuses_a_wrong_object():
    """The check above can fail: a misspelt field is refused."""
    daemonset = next(o for o in render(DEPLOY / "base") if o["kind"] == "DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubectl_kustomize_renders_the_same_objects(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the render above stands in for kustomize")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    theirs = {_key(o): o for o in yaml.safe_load_all(done.stdout) if o}
    ours = {_key(o): o for o in render(DEPLOY / overlay)}
    assert theirs == ours


def test_the_control_plane_and_the_gpu_agent_are_deployed_as_the_issue_asks():
    objects = {(_key(o)[0], _key(o)[2]): o for o in render(DEPLOY / "with-databases")}
    for name in ("adaptrain-web", "adaptrain-worker", "adaptrain-beat"):
        assert ("Deployment", name) in objects
    assert objects[("Deployment", "adaptrain-beat")]["spec"]["replicas"] == 1
    assert ("StatefulSet", "adaptrain-postgres") in objects
    assert ("Service", "adaptrain-redis") in objects

    agent = objects[("DaemonSet", "adaptrain-agent")]["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in agent[
        "tolerations"
    ]
    assert agent["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    container = agent["containers"][0]
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AGENT_ON_EXIT"]["value"] == "leave"
    assert env["AGENT_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    # Every selector picks its own pods; every ConfigMap referenced is shipped, every
    # Secret is one the admin creates.
    configmaps = {n for (k, n) in objects if k == "ConfigMap"}
    for (kind, name), obj in objects.items():
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        if kind == "Service":
            pods = [
                o["spec"]["template"]["metadata"]["labels"]
                for o in objects.values()
                if o["kind"] in ("Deployment", "StatefulSet")
            ]
            assert any(obj["spec"]["selector"].items() <= p.items() for p in pods), name
        text = yaml.safe_dump(obj)
        for ref in yaml.safe_load_all(text):
            _check_refs(ref, configmaps)


def test_the_node_credential_is_kept_in_a_secret_made_by_an_init_step():
    """The init step enrols with the join token and keeps the credential in a Secret; the
    agent container gets the credential in memory and holds neither the join token nor a
    Kubernetes token; the account may do no more than keep Secrets."""
    objects = {(_key(o)[0], _key(o)[2]): o for o in render(DEPLOY / "base")}
    pod = objects[("DaemonSet", "adaptrain-agent")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "adaptrain-agent"
    assert pod["automountServiceAccountToken"] is False
    enrol = next(c for c in pod["initContainers"] if c.get("args") == ["enrol-kubernetes"])
    # The args go to the agent image's entrypoint, the agent's command.
    dockerfile = (DEPLOY.parents[1] / "Dockerfile.agent").read_text()
    assert 'ENTRYPOINT ["adaptrain-agent"]' in dockerfile and "command" not in enrol
    assert enrol["image"] == pod["containers"][0]["image"]
    agent = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}

    init_env = {e["name"]: e for e in enrol["env"]}
    token_ref = init_env["AGENT_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token_ref["name"] == "adaptrain-join-token" and token_ref["optional"] is True
    agent_env = {e["name"]: e for e in agent["env"]}
    assert "AGENT_JOIN_TOKEN" not in agent_env
    # Both containers name the node and its address alike, and share the credential file.
    for name in ("AGENT_SERVER", "AGENT_NAME", "AGENT_ADDRESS", "AGENT_LABELS", "AGENT_GPUS"):
        assert init_env[name] == agent_env[name], name
    assert init_env["AGENT_CREDENTIAL_FILE"] == agent_env["AGENT_CREDENTIAL_FILE"]
    credential_dir = init_env["AGENT_CREDENTIAL_FILE"]["value"].rsplit("/", 1)[0]
    mounts = {m["mountPath"]: m["name"] for m in enrol["volumeMounts"]}
    assert volumes[mounts[credential_dir]]["emptyDir"]["medium"] == "Memory"
    assert {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}[credential_dir] == mounts[
        credential_dir
    ]
    # Enrolment sends the node's slots and GPU labels: the init step sees the same GPUs.
    assert enrol["resources"]["limits"] == agent["resources"]["limits"]

    # The Kubernetes token is mounted into the init container only.
    api_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert volumes[mounts[api_dir]]["projected"]["sources"][0]["serviceAccountToken"]
    assert all(m["mountPath"] != api_dir for m in agent["volumeMounts"])

    role = objects[("Role", "adaptrain-agent-node-credentials")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update"]}
    ]
    binding = objects[("RoleBinding", "adaptrain-agent-node-credentials")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "adaptrain-agent", "namespace": "adaptrain"}
    ]
    assert ("ServiceAccount", "adaptrain-agent") in objects


def _check_refs(node, configmaps: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("configMapRef", "configMapKeyRef"):
                assert value["name"] in configmaps, value
            if key in ("secretRef", "secretKeyRef"):
                assert value["name"] in ADMIN_SECRETS, value
            _check_refs(value, configmaps)
    elif isinstance(node, list):
        for item in node:
            _check_refs(item, configmaps)
