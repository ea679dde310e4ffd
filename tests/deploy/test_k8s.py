"""deploy/k8s against the bundled Kubernetes schemas (offline) and against the app's own settings and routes."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from tagifai_api import settings
from tests.helpers import ROOT, gunicorn_default

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return doc


@pytest.fixture(scope="module")
def deployment():
    return load("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS}


def test_configmap_sets_only_known_settings():
    data = load("configmap.yaml")["data"]
    assert data
    for name, value in data.items():
        assert name.startswith(settings.ENV_PREFIX), name
        assert name[len(settings.ENV_PREFIX):] in settings.SETTINGS, f"{name} is not in settings.SETTINGS"
        assert isinstance(value, str), f"{name}: ConfigMap values must be strings"
    # the app itself accepts every value as written
    settings.from_env(data)


def test_probes_hit_real_routes(container, app):
    adapter = app.url_map.bind("localhost")
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        path = container[probe]["httpGet"]["path"]
        assert adapter.match(path, method="GET")[0].startswith("health."), path


def test_config_comes_from_the_configmap(container):
    names = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
    assert load("configmap.yaml")["metadata"]["name"] in names


def test_shutdown_lets_in_flight_requests_finish(deployment, container):
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    graceful = int(env.get("GUNICORN_GRACEFUL_TIMEOUT") or gunicorn_default("graceful_timeout"))
    assert grace > pre_stop + graceful


def test_resources_and_workers_agree(container):
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert int(env["WEB_CONCURRENCY"]) == int(resources["requests"]["cpu"])


def test_runs_as_the_images_non_root_user(deployment, container):
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    # Prometheus samples go to the temp dir, which must stay writable under a read-only root
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]


def test_service_and_hpa_target_the_deployment(deployment, container):
    service = load("service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    hpa = load("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2


def database_url_ref(container: dict) -> dict:
    (entry,) = [e for e in container.get("env", []) if e["name"] == "TAGIFAI_DATABASE_URL"]
    assert "value" not in entry, "the database URL holds its password: it comes from a Secret"
    return entry["valueFrom"]["secretKeyRef"]


def test_database_url_comes_from_a_secret_never_committed(deployment, container):
    """Every container of the pod reads TAGIFAI_DATABASE_URL from one Secret (not optional: a pod
    without it waits rather than start on a store of its own); no manifest carries it, and the README
    says how to create it."""
    ref = database_url_ref(container)
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert database_url_ref(init) == ref
    assert not ref.get("optional")
    data = load("configmap.yaml")["data"]
    assert "TAGIFAI_DATABASE_URL" not in data and "TAGIFAI_API_KEYS_FILE" not in data  # keys live in the store
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert not doc or doc["kind"] != "Secret", f"{path.name}: a Secret is created by hand, never committed"
    readme = (ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme


def test_no_volume_is_shared_between_pods(deployment, container):
    """The state is in the database and the versions come with the image: nothing needs ReadWriteMany."""
    spec = deployment["spec"]["template"]["spec"]
    for volume in spec.get("volumes", []):
        assert set(volume) == {"name", "emptyDir"}, volume["name"]
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "PersistentVolumeClaim":
                assert "ReadWriteMany" not in doc["spec"]["accessModes"], path.name
    assert load("configmap.yaml")["data"]["TAGIFAI_ARTIFACTS_DIR"] == "/app/artifacts"  # the image's, read-only
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["replicas"] >= 2


def test_an_init_container_prepares_the_store_from_the_image(deployment, container):
    """Schema up to date, and the image's newest version the default of a store that has none."""
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == container["image"]
    assert init["command"] == ["python", "-m", "tagifai_api", "seed", "/app/artifacts"]  # where the Dockerfile puts them
    assert load("configmap.yaml")["data"]["TAGIFAI_ARTIFACTS_DIR"] == init["command"][-1]  # so nothing is copied
    assert not init.get("volumeMounts")
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert {r["configMapRef"]["name"] for r in init["envFrom"]} == {r["configMapRef"]["name"]
                                                                    for r in container["envFrom"]}


def test_the_autoscaler_scales_on_the_cpu_each_pod_requests(deployment, container):
    """CPU utilisation is measured against the container's request, which must therefore be set."""
    hpa = load("hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert container["resources"]["requests"]["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"]


def test_the_disruption_budget_keeps_a_pod_serving_and_never_blocks_a_drain(deployment):
    pdb = load("pdb.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]
    assert load("hpa.yaml")["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1


def test_pods_spread_over_nodes_and_zones(deployment):
    spec = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    # a rule across nodes; across zones a preference (nodes without zone labels would refuse every pod)
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["nodeTaintsPolicy"] == "Honor"  # a cordoned node is no domain
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


# --- deploy/k8s/retrain: the base plus nightly retraining -------------------------------------------

RETRAIN = K8S / "retrain"


def load_retrain(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((RETRAIN / name).read_text()) if d]
    return doc


def merged(base, patch):
    """``patch`` applied to ``base`` as kustomize's strategic merge does for these files: maps merge, lists
    of named entries (containers, volumes, mounts) merge by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: merged(base[k], v) if k in base else v for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i
                                                                   for i in base + patch):
        named = {i["name"]: i for i in patch}
        out = [merged(i, named.pop(i["name"])) if i["name"] in named else i for i in base]
        return out + list(named.values())
    return patch


@pytest.fixture(scope="module")
def overlay() -> dict:
    """The overlay's kustomization and what it produces: ``{"kustomization", "deployment", "configmap",
    "cronjob", "pvc"}``."""
    kustomization = yaml.safe_load((RETRAIN / "kustomization.yaml").read_text())
    patches = {load_retrain(p["path"])["kind"]: load_retrain(p["path"]) for p in kustomization["patches"]}
    return {"kustomization": kustomization,
            "deployment": merged(load("deployment.yaml"), patches["Deployment"]),
            "configmap": merged(load("configmap.yaml"), patches["ConfigMap"]),
            "cronjob": load_retrain("cronjob.yaml"), "pvc": load_retrain("versions-pvc.yaml")}


def test_the_retraining_overlay_builds_valid_kubernetes(overlay):
    kustomization = overlay["kustomization"]
    listed = set(kustomization["resources"]) | {p["path"] for p in kustomization["patches"]}
    assert listed == {"../"} | {p.name for p in RETRAIN.glob("*.yaml") if p.name != "kustomization.yaml"}
    for kind in ("deployment", "configmap", "cronjob", "pvc"):
        kubernetes_validate.validate(overlay[kind], kubernetes_validate.latest_version(), strict=True)
    settings.from_env(overlay["configmap"]["data"])


def test_the_cronjob_promotes_then_retrains_nightly_one_run_at_a_time(overlay, container):
    cron = overlay["cronjob"]["spec"]
    minute, hour, *rest = cron["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"]  # once a night
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (job,) = pod["containers"]
    assert job["image"] == container["image"]
    assert job["command"][:2] == ["sh", "-c"]
    steps = [step.split() for step in job["command"][2].split("&&")]
    assert steps == [["python", "-m", "tagifai_api", "promote", "--if-better"],
                     ["python", "-m", "tagifai_api", "retrain", "--shadow"]]
    from tagifai_api.cli import cli

    for step in steps:  # real commands and options of this release
        command = cli.commands[step[3]]
        assert {o for p in command.params for o in p.opts} >= set(step[4:])
    assert database_url_ref(job) == database_url_ref(container)
    assert [r["configMapRef"]["name"] for r in job["envFrom"]] == [r["configMapRef"]["name"]
                                                                   for r in container["envFrom"]]
    assert pod["securityContext"]["runAsNonRoot"] is True and job["securityContext"]["readOnlyRootFilesystem"]
    assert "/tmp" in [m["mountPath"] for m in job["volumeMounts"]]


def test_the_pods_and_the_cronjob_share_one_volume_of_versions(overlay):
    versions = overlay["configmap"]["data"]["TAGIFAI_ARTIFACTS_DIR"]
    claim = overlay["pvc"]["metadata"]["name"]
    assert overlay["pvc"]["spec"]["accessModes"] == ["ReadWriteMany"]  # written by one pod, read on any node
    assert overlay["configmap"]["data"]["TAGIFAI_PREDICTION_LOG"] == "texts"  # corrections can be trained on

    def mount(spec: dict, container: dict) -> dict:
        (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        (found,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert found["mountPath"] == versions
        return found

    pods = overlay["deployment"]["spec"]["template"]["spec"]
    (api,) = pods["containers"]
    (init,) = pods["initContainers"]
    assert mount(pods, api)["readOnly"] is True  # serving pods never train
    assert not mount(pods, init).get("readOnly")  # seed copies the image's versions in
    assert init["command"][-1] == "/app/artifacts" != versions
    job_spec = overlay["cronjob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert not mount(job_spec, job_spec["containers"][0]).get("readOnly")
    assert pods["securityContext"]["fsGroup"] == job_spec["securityContext"]["fsGroup"]
