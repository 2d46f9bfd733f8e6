"""Settings of the Kubernetes adapter, grouped by concern; each default says why it was chosen."""

from __future__ import annotations

from dataclasses import dataclass, field

from k8s.names import check_namespace


@dataclass(frozen=True)
class ManifestSettings:
    """How a plan becomes Kubernetes objects: images, namespaces and per-pod resources. The
    Triton configs inside them follow :class:`serving.settings.TritonSettings`."""

    namespace: str = "packer"
    """Where the serving objects and the reconciler live; one namespace keeps RBAC to a Role."""
    gpu_operator_namespace: str = "gpu-operator"
    """The device plugin and mig-manager read their ConfigMaps from the GPU operator's namespace."""
    triton_image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    """A release with the Python backend and explicit model control; pinned so renders are stable."""
    fetch_image: str = "busybox:1.36"
    """The init container only copies configs and fetches artifacts over https: busybox has wget
    and sha256sum (the digest, not TLS, is what vouches for the file). Pin both images by digest
    (``name@sha256:...``) in production: ``packer render k8s --triton-image``."""
    cpu_request: str = "2"
    """Triton's HTTP/gRPC front end and the Python backend stubs need a couple of cores per server."""
    memory_request: str = "8Gi"
    """Host memory for model loading (weights pass through host RAM) and the stub processes."""
    shm_size: str = "1Gi"
    """The Python backend moves tensors through /dev/shm; the 64 MiB container default is too small."""
    pool_label: str = "packer.dev/pool"
    """Node label naming a node's pool; the cluster admin sets it when creating the node pool."""
    run_as_user: int = 1000
    """Triton's images carry a non-root ``triton-server`` user with this uid."""
    admin_key_secret: str = "packer-triton-admin"
    """Secret (key ``key``) holding the header value that unlocks Triton's admin APIs (model
    loading, model config, shared memory, statistics, trace, logging): without it in the
    ``packer-admin-key`` header those APIs answer 403. Create it before the first apply (see
    docs/kubernetes.md); only the reconciler's pod is given it."""
    restricted_apis: str = "model-repository,model-config,shared-memory,statistics,trace,logging"
    """Triton API groups behind the admin key; health, metadata and inference stay open to clients."""
    reconciler_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/name", "packer-reconciler"),)
    """Pod labels of the reconciler (k8s/deploy/base/reconciler.yaml): the NetworkPolicy lets only it
    reach the servers' metrics port."""
    require_artifact_sha256: bool = True
    """Refuse an https artifact without ``sha256`` in the fleet: the fetch verifies what it got."""
    devices: str = "device-plugin"
    """How a server gets its GPU (:mod:`k8s.devices`): the NVIDIA device plugin, which every GPU
    operator install runs; ``dra``, ``hami`` and ``kai`` need their driver or scheduler installed."""
    kai_queue: str = "default-queue"
    """KAI Scheduler's queue of the servers (``--devices kai:QUEUE``); KAI's quick start creates
    ``default-queue``."""

    def __post_init__(self) -> None:
        # Each is written into objects as given; the CLI checks its flags first, naming them.
        check_namespace(self.namespace, "namespace")
        check_namespace(self.gpu_operator_namespace, "gpu_operator_namespace")


@dataclass(frozen=True)
class ReconcileSettings:
    """How the in-cluster loop paces itself, elects a leader and limits disruption."""

    interval_s: float = 15.0
    """Seconds between level-triggered cycles: well under the scaling policy's reaction time."""
    lease_name: str = "packer-reconciler"
    lease_duration_s: int = 30
    """A dead leader is replaced after this long; two missed renewals at the default interval."""
    fence_margin_s: float = 5.0
    """A leader stops writing this long before its lease runs out (at most a third of the lease):
    slack for clock drift between replicas and for a write already on the wire. Every API call of a
    leading cycle is checked against the lease and its timeout bounded by the time left."""
    max_disruptions_per_cycle: int = 4
    """Deletions, rolling updates and node relabels per cycle: each may cost serving capacity."""
    max_attempts: int = 5
    """Tries per API call on 409/429/5xx/timeouts before the cycle gives up (the next cycle retries)."""
    backoff_base_s: float = 0.2
    """First retry delay; doubled each try with full jitter, as the client-go default backoff does."""
    backoff_max_s: float = 5.0
    request_timeout_s: float = 10.0
    """Per-request timeout: a hung API server must not stall the loop forever. A leader's calls get
    less when less of its lease is left."""
    fleet_configmap: str = "packer-fleet"
    status_configmap: str = "packer-status"
    policy_checkpoint_s: float = 300.0
    """How stale the scaling policy's saved hysteresis may get: a restart loses at most this much
    of its sample window (which only delays a scale-down), and quiet cycles write nothing."""
    identity: str = ""
    """Leader-election identity; empty means the pod name (``HOSTNAME``)."""
    render: ManifestSettings = field(default_factory=ManifestSettings)
