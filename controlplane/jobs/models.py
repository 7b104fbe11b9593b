"""Jobs and their runs (attempts), the nodes (agents) that run them, their workers,
commands and audit events."""

from __future__ import annotations

import re

from django.conf import settings
from django.db import models
from django.utils import timezone

from agent.protocol import vocabulary


def code_kinds_unsaid() -> list[str]:
    """What a node whose agent does not say runs: one from before code bundles."""
    return list(vocabulary.CODE_KINDS_UNSAID)


class NodeQuerySet(models.QuerySet):
    def enrolled(self) -> NodeQuerySet:
        """Nodes not deleted by an admin (the nodes page, the name's owner)."""
        return self.filter(deleted_at__isnull=True)

    def schedulable(self) -> NodeQuerySet:
        """Nodes new workers may go to: online and not draining (placement, grows)."""
        return self.enrolled().filter(status=Node.Status.ONLINE, draining=False)


class Node(models.Model):
    """One enrolment of a machine's agent. An admin may drain a node (no new workers go
    there; those running carry on), revoke it (its credential stops working and its jobs
    go on without it, as for a lost node) and delete it once no worker runs there; a
    deleted node's row stays, for the history of the jobs it ran, and frees its name."""

    class Status(models.TextChoices):
        ONLINE = "online"
        OFFLINE = "offline"
        # Silent past the heartbeat timeout: its workers may still train (their jobs keep
        # their status) until NODE_LOST_GRACE_S more has passed; then it is lost.
        UNREACHABLE = "unreachable"
        LOST = "lost"
        REVOKED = "revoked"  # by an admin: the credential is refused
        INCOMPATIBLE = "incompatible"  # the agent speaks a protocol the control plane does not

    name = models.CharField(max_length=100)
    address = models.CharField(max_length=255, help_text="Host the node's workers listen on.")
    slots = models.PositiveIntegerField(default=1)
    labels = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    # Why the node is revoked or incompatible (what to do about it); empty otherwise.
    status_reason = models.TextField(blank=True)
    # Drained by an admin: placement and grows skip it; its running workers carry on.
    draining = models.BooleanField(default=False)
    credential_hash = models.CharField(max_length=64, unique=True)
    # What the agent said at its last enrolment, heartbeat or connection.
    agent_version = models.CharField(max_length=50, blank=True)
    protocol = models.PositiveIntegerField(null=True, blank=True)
    # The kinds of code the node runs (its AGENT_CODE; vocabulary.CODE_KINDS): placement
    # only puts a job there whose code_kind is among them.
    code_kinds = models.JSONField(default=code_kinds_unsaid, blank=True)
    join_token = models.ForeignKey(
        "JoinToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes"
    )
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    # Each GPU as the latest heartbeat said (agent.protocol.rest.GpuStat dicts); [] without.
    gpus = models.JSONField(default=list, blank=True)
    # When the node was found silent (unreachable); null while it is not.
    unreachable_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        constraints = [
            # One enrolled node per name; deleted nodes keep theirs, for the history.
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(deleted_at__isnull=True),
                name="node_unique_name_enrolled",
            )
        ]

    def __str__(self) -> str:
        return self.name


class JoinToken(models.Model):
    """A token an admin creates for agents to enrol with: each enrolment uses it once,
    up to ``uses_allowed`` times, until it expires or is revoked. Only its digest is
    stored (the secret is shown once), and ``prefix`` recognises it."""

    label = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, blank=True)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    uses_allowed = models.PositiveIntegerField(default=1)
    uses_left = models.PositiveIntegerField(default=1)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(uses_left__lte=models.F("uses_allowed")),
                name="join_token_uses_left_within_allowed",
            )
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.label})" if self.label else f"{self.prefix}…"


# The entrypoints a job may name, and the module the agent runs for each (``python -m``).
# A job's entrypoint: ``package.module`` (run as ``python -m`` runs it) or
# ``package.module:function`` (imported, then the function is called with no arguments).
ENTRYPOINT_FORM = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?$")
# Short names for the examples that ship with adaptrain: the module each one runs.
ENTRYPOINTS = {
    "examples.digits": "examples.digits.train",
    "examples.synthetic_cnn": "examples.synthetic_cnn.train",
    # The same two on the PyTorch runtime (agent.runtime.torch; the node needs the torch extra).
    "examples.digits_torch": "examples.digits_torch.train",
    "examples.synthetic_cnn_torch": "examples.synthetic_cnn_torch.train",
}


class Job(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        SCHEDULING = "scheduling"
        RUNNING = "running"
        RESCALING = "rescaling"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    # The vocabulary agents and workers share (agent.protocol): one spelling everywhere.
    Strategy = models.TextChoices("Strategy", vocabulary.STRATEGIES.enum_members())
    Topology = models.TextChoices("Topology", vocabulary.TOPOLOGIES.enum_members())

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs"
    )
    name = models.CharField(max_length=200)
    entrypoint = models.CharField(max_length=200)
    # The code bundle the job's workers run in (sha256 of a stored controlplane.bundles
    # archive), or empty: the entrypoint is installed on the nodes (or an example).
    bundle_digest = models.CharField(max_length=64, blank=True, default="")
    hyperparameters = models.JSONField(default=dict)
    workers_initial = models.PositiveIntegerField(default=1)
    workers_min = models.PositiveIntegerField(default=1)
    workers_max = models.PositiveIntegerField(default=1)
    # The strategy and topology the job runs with now (a policy or a user may switch them
    # while it runs) and the ones it was created with (a run from scratch starts with those).
    strategy = models.CharField(max_length=8, choices=Strategy.choices, default=Strategy.SSGD)
    topology = models.CharField(max_length=16, choices=Topology.choices, default=Topology.RING)
    strategy_initial = models.CharField(
        max_length=8, choices=Strategy.choices, default=Strategy.SSGD
    )
    topology_initial = models.CharField(
        max_length=16, choices=Topology.choices, default=Topology.RING
    )
    policy = models.ForeignKey(
        "policies.Policy", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    # The policy version the job runs with now (a PUT of the policy makes a new version,
    # which running jobs take up at their next evaluation; an event records the change).
    policy_version = models.PositiveIntegerField(null=True, blank=True)
    # Label → value pairs a node's labels must all contain for the job's workers to go there
    # (initial placement and every grow); empty: any node.
    node_selector = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_reason = models.TextField(blank=True)
    # Current values of the knobs a policy or a user can change while the job runs.
    batch_size = models.PositiveIntegerField()
    learning_rate = models.FloatField()
    workers_current = models.PositiveIntegerField(default=0)
    # The size an elastic job should have: set by every scale_workers a user or a policy
    # issues; null means workers_initial. A job below it (placed with fewer workers than
    # wanted when slots were short, or shrunk by a crash or a lost node) is grown back by
    # the scheduler when slots are free (services.jobs_grow_to_wanted).
    workers_wanted = models.PositiveIntegerField(null=True, blank=True)
    # The latest cluster-spec version written (see ClusterVersion); 0 until every initial
    # worker has registered its port.
    cluster_version = models.PositiveIntegerField(default=0)
    # Highest step any worker has reported; policies read it.
    last_step = models.BigIntegerField(default=0)
    # Per-job counters: commands are ordered by ``command_seq``, live messages by ``live_seq``.
    command_seq = models.BigIntegerField(default=0)
    live_seq = models.BigIntegerField(default=0)
    # Per-rule evaluation memory of the job's policy (hysteresis counters).
    policy_state = models.JSONField(default=dict, blank=True)
    # The run (attempt) the job's status, workers and cluster versions are about now; null
    # until the job is first placed. The job's status changes are mirrored onto it.
    current_run = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="current_of"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The Idempotency-Key the job was created with (unique per owner) and the sha256 of
    # that request's body: a retry with the same key and body gets this job back.
    idempotency_key = models.CharField(max_length=100, blank=True, default="")
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # The user's own label → value pairs (team, experiment…), searched by the jobs list.
    labels = models.JSONField(default=dict, blank=True)
    # When the job was archived: hidden from the jobs list unless asked for (archived=).
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["status"])]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="job_idempotency_key_per_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} (#{self.pk})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def module(self) -> str:
        """What the workers run: the entrypoint, an example's short name resolved."""
        return ENTRYPOINTS.get(self.entrypoint, self.entrypoint)

    @property
    def code_kind(self) -> str:
        """Where the job's code comes from, as nodes name what they accept (AGENT_CODE)."""
        return vocabulary.code_kind(self.module, self.bundle_digest)

    @property
    def is_elastic(self) -> bool:
        return self.workers_min < self.workers_max

    @property
    def wanted_workers(self) -> int:
        return self.workers_wanted or self.workers_initial


class Run(models.Model):
    """One attempt at executing a job, numbered 1, 2, … per job.

    The first placement of a job makes run 1; restarting a finished job makes the next
    one (pending until it is placed). A run's status follows the job's while it is the
    job's current run (lifecycle.job_transition mirrors every change) and stays as it ended
    afterwards. Workers, cluster versions and commands belong to the run they were made
    for, so a restart starts again from worker number 0 and cluster version 1.
    """

    Status = Job.Status
    TERMINAL = Job.TERMINAL

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="runs")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Job.Status.choices, default=Job.Status.PENDING)
    status_reason = models.TextField(blank=True)
    # Who started the run and why: "scheduler" for a job's first placement, "user:<name>"
    # for a restart (with the reason the user gave, if any).
    created_by = models.CharField(max_length=200)
    reason = models.TextField(blank=True)
    # The checkpoint folder the run's workers restore before training (the ``resume_from``
    # they are started with); empty: the run trains from scratch. ``resume_note`` says
    # where it came from (asked for, the job's latest checkpoint, or why there is none).
    resumed_from = models.CharField(max_length=500, blank=True)
    resumed_from_step = models.BigIntegerField(null=True, blank=True)
    resume_note = models.TextField(blank=True)
    # What the run saw: its latest cluster version, the fewest and most workers any of
    # its cluster versions had, and the job's step when its status last changed.
    cluster_version = models.PositiveIntegerField(default=0)
    workers_min_seen = models.PositiveIntegerField(null=True, blank=True)
    workers_max_seen = models.PositiveIntegerField(null=True, blank=True)
    last_step = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job_id", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="run_unique_number")]

    def __str__(self) -> str:
        return f"job {self.job_id} run {self.number} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class Worker(models.Model):
    """One training process of a job's run.

    ``rank`` is the worker's number in the run, fixed for its life: the initial workers
    are 0..n-1 (their ranks in cluster version 1) and joiners are numbered on from the
    highest so far. Its rank in a later version is its index in that version's members
    (a crash in the middle shifts the ranks above it down; the numbers stay).
    """

    class State(models.TextChoices):
        STARTING = "starting"
        JOINING = "joining"  # a joiner the agent is starting (warm standby to be)
        STANDBY = "standby"  # a joiner that built its model and waits to be let in
        RUNNING = "running"
        LEFT = "left"  # removed from the cluster (shrink) and exited cleanly
        EXITED = "exited"
        FAILED = "failed"

    ACTIVE = (State.STARTING, State.JOINING, State.STANDBY, State.RUNNING)

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="workers")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="workers")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="workers")
    rank = models.PositiveIntegerField()
    # Chosen by the agent when it starts the worker (free port on the node).
    port = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTING)
    # The highest cluster version this worker reported training in (``rescaled``).
    cluster_version = models.PositiveIntegerField(default=0)
    # When the worker was placed; a joiner that has not reported standby within
    # RESCALE_JOIN_TIMEOUT_S of it is given up on (services.elastic.joiners_expire).
    created_at = models.DateTimeField(default=timezone.now)

    @property
    def address(self) -> str | None:
        return f"{self.node.address}:{self.port}" if self.port else None

    class Meta:
        ordering = ["job_id", "run_id", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["run", "rank"], name="worker_unique_rank_in_run")
        ]


class ClusterVersion(models.Model):
    """One version of a run's cluster spec: its members in rank order, and who made it
    and why. Versions of a run are numbered 1, 2, … and never change once written."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="cluster_versions")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="cluster_versions")
    version = models.PositiveIntegerField()
    members = models.JSONField(help_text="host:port of each member, index = rank")
    workers = models.JSONField(help_text="Worker.rank (worker number) of each member")
    actor = models.CharField(max_length=200)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job_id", "run_id", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "version"], name="cluster_version_unique_in_run"
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} run {self.run_id} v{self.version}: {len(self.members)} member(s)"


class Command(models.Model):
    """A change to a running job. A row first (durable), then pushed to the node."""

    Type = models.TextChoices("Type", vocabulary.COMMAND_TYPES.enum_members())

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        ACKED = "acked"
        APPLIED = "applied"
        FAILED = "failed"
        EXPIRED = "expired"

    IN_FLIGHT = (State.PENDING, State.SENT, State.ACKED)

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="commands")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="commands")
    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="commands")
    seq = models.BigIntegerField(help_text="Order of this command within its job.")
    type = models.CharField(max_length=32, choices=Type.choices)
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    issued_by = models.CharField(max_length=200, help_text="user:<name> or policy:<policy>/<rule>")
    idempotency_key = models.CharField(max_length=100, null=True, blank=True)
    applied_step = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["job_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["job", "node", "seq"], name="command_unique_seq"),
            # Per run: a policy's key names the step, and a restarted run counts steps again.
            models.UniqueConstraint(
                fields=["run", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="command_unique_idempotency_key_in_run",
            ),
        ]
        indexes = [models.Index(fields=["node", "state"])]


class Event(models.Model):
    """Append-only audit log of what happened to a job, who did it and why."""

    class Kind(models.TextChoices):
        STATE = "state"
        COMMAND = "command"
        DECISION = "decision"
        NODE = "node"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    # The job's current run when it happened (None before the job was first placed).
    run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.CASCADE, related_name="events"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    actor = models.CharField(max_length=200)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    step = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class JobDeletion(models.Model):
    """The audit record of a deleted job: the job and everything under it (runs, workers,
    events, metrics, logs) is gone, so who deleted what, and when, is kept here."""

    job_id = models.BigIntegerField()
    name = models.CharField(max_length=200)
    owner = models.CharField(max_length=150)
    status = models.CharField(max_length=16)
    deleted_by = models.CharField(max_length=200)
    deleted_at = models.DateTimeField(auto_now_add=True)
    # How much went with it: {"runs": n, "events": n, "metric_points": n, "log_lines": n}.
    removed = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
