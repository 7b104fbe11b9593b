"""REST endpoints for adaptation policies: CRUD with versions, enable/disable, validation,
templates, replays (of a saved policy or of an unsaved definition) and approvals."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, int_query_param
from controlplane.jobs import selectors as job_selectors
from controlplane.policies import payoff, selectors, services
from controlplane.policies.models import Decision, Policy, PolicyVersion
from controlplane.policies.templates import TEMPLATES


class PolicyOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")

    class Meta:
        model = Policy
        fields = [
            "id",
            "name",
            "description",
            "owner",
            "version",
            "enabled",
            "definition",
            "created_at",
            "updated_at",
        ]


class PolicyListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    @extend_schema(responses={200: PolicyOutputSerializer(many=True), **ERRORS})
    def get(self, request):
        return Response(
            PolicyOutputSerializer(selectors.policies_visible_to(request.user), many=True).data
        )

    @extend_schema(request=InputSerializer, responses={201: PolicyOutputSerializer, **ERRORS})
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        policy = services.policy_create(
            owner=request.user, definition=data.validated_data["definition"]
        )
        return Response(PolicyOutputSerializer(policy).data, status=status.HTTP_201_CREATED)


class PolicyDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField(required=False)
        enabled = serializers.BooleanField(required=False)

        def validate(self, attrs):
            if not attrs:
                raise serializers.ValidationError(
                    "Send a definition (saved as a new version) and/or enabled."
                )
            return attrs

    @extend_schema(responses={200: PolicyOutputSerializer, **ERRORS})
    def get(self, request, policy_id: int):
        return Response(
            PolicyOutputSerializer(
                selectors.policy_get_for_user(user=request.user, policy_id=policy_id)
            ).data
        )

    @extend_schema(request=InputSerializer, responses={200: PolicyOutputSerializer, **ERRORS})
    def put(self, request, policy_id: int):
        policy = selectors.policy_get_for_user(user=request.user, policy_id=policy_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        if "definition" in v:
            policy = services.policy_update(
                policy=policy, definition=v["definition"], user=request.user
            )
        if "enabled" in v:
            policy = services.policy_set_enabled(policy=policy, enabled=v["enabled"])
        return Response(PolicyOutputSerializer(policy).data)

    @extend_schema(
        responses={204: None, 409: ERRORS[400], **ERRORS},
        description="Refused (409, with the job ids in details.jobs) while an unfinished job uses the "
        'policy: disable it instead (PUT {"enabled": false}), or delete it once those jobs end.',
    )
    def delete(self, request, policy_id: int):
        services.policy_delete(
            policy=selectors.policy_get_for_user(user=request.user, policy_id=policy_id)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class PolicyVersionOutputSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)

    class Meta:
        model = PolicyVersion
        fields = ["version", "definition", "created_by", "created_at"]


class PolicyVersionListApi(APIView):
    @extend_schema(responses={200: PolicyVersionOutputSerializer(many=True), **ERRORS})
    def get(self, request, policy_id: int):
        policy = selectors.policy_get_for_user(user=request.user, policy_id=policy_id)
        return Response(
            PolicyVersionOutputSerializer(selectors.policy_versions(policy), many=True).data
        )


class DecisionOutputSerializer(serializers.ModelSerializer):
    policy = serializers.CharField(source="policy.name")
    run = serializers.IntegerField(
        source="run.number",
        allow_null=True,
        default=None,
        help_text=(
            "the number of the job's run the decision was made in (its step counts from that run's start)"
        ),
    )

    class Meta:
        model = Decision
        fields = [
            "id",
            "policy",
            "policy_version",
            "run",
            "rule",
            "step",
            "inputs",
            "action",
            "outcome",
            "command",
            "decided_by",
            "created_at",
        ]


class JobDecisionListApi(APIView):
    @extend_schema(
        responses={200: DecisionOutputSerializer(many=True), **ERRORS},
        parameters=[
            OpenApiParameter(
                "run",
                int,
                description=(
                    "only the decisions of this run (its number within the job: 1, 2, …); default: every run's, "
                    "oldest first, each with its run number. An unknown number is a 404 whose details.runs lists "
                    "the job's runs"
                ),
            )
        ],
    )
    def get(self, request, job_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        number = int_query_param(request, "run", low=1)
        run = job_selectors.job_run_get(job, number) if number is not None else None
        return Response(
            DecisionOutputSerializer(selectors.job_decisions(job, run=run), many=True).data
        )


class AdaptationWindowSerializer(serializers.Serializer):
    points = serializers.IntegerField(help_text="throughput points in the window (0: none)")
    first_step = serializers.IntegerField(allow_null=True)
    last_step = serializers.IntegerField(allow_null=True)
    throughput = serializers.FloatField(
        allow_null=True, help_text="median samples/s over the window"
    )
    batch_size = serializers.FloatField(allow_null=True, help_text="global batch (median)")
    workers = serializers.FloatField(allow_null=True)
    lr = serializers.FloatField(allow_null=True)
    efficiency = serializers.FloatField(
        allow_null=True, help_text="statistical efficiency E(M) = (φ + M0)/(φ + M)"
    )
    goodput = serializers.FloatField(
        allow_null=True, help_text="throughput × efficiency, in M0-equivalent samples/s"
    )


class AdaptationDecisionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    policy = serializers.CharField()
    rule = serializers.CharField()
    action = serializers.CharField(help_text="what the rule asked (e.g. optimize_goodput)")
    predicted_gain = serializers.FloatField(
        allow_null=True, help_text="optimize_goodput's predicted goodput gain (0.2: +20 %)"
    )


class AdaptationSerializer(serializers.Serializer):
    run = serializers.IntegerField(help_text="the run's number within the job")
    seq = serializers.IntegerField(help_text="the command's number within the job")
    action = serializers.CharField()
    value_from = serializers.JSONField(help_text="the knob's value before (null: not known)")
    value_to = serializers.JSONField()
    state = serializers.CharField(help_text="applied, or the command's state if not applied")
    step = serializers.IntegerField(allow_null=True, help_text="the step it was applied at")
    issued_by = serializers.CharField(
        help_text="user:<name>, policy:<policy>/<rule>, provisioning:goodput or scheduler"
    )
    decision = AdaptationDecisionSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    before = AdaptationWindowSerializer(allow_null=True)
    after = AdaptationWindowSerializer(allow_null=True)
    gns = serializers.FloatField(
        allow_null=True, help_text="φ used for both sides: median gns over both windows"
    )
    span_steps = serializers.IntegerField(
        allow_null=True, help_text="steps the change was in force (to the next, or the latest)"
    )
    span_s = serializers.FloatField(allow_null=True)
    time_saved_s = serializers.FloatField(
        allow_null=True,
        help_text="seconds the span's progress would have taken at the goodput before, less "
        "span_s: positive saved, negative lost; null when the windows do not say",
    )
    note = serializers.CharField(help_text="why figures are missing, in words; empty if none")


class JobAdaptationsOutputSerializer(serializers.Serializer):
    base_batch = serializers.FloatField(help_text="M0: the batch the job was created with")
    window = serializers.IntegerField(help_text="points per window")
    time_saved_s = serializers.FloatField(
        allow_null=True, help_text="the sum of the rows' time_saved_s that are known"
    )
    adaptations = AdaptationSerializer(many=True)


def _window_out(window, efficiency, good):
    if window is None:
        return None
    return {
        "points": window.points,
        "first_step": window.first_step,
        "last_step": window.last_step,
        "throughput": window.throughput,
        "batch_size": window.batch_size,
        "workers": window.workers,
        "lr": window.lr,
        "efficiency": efficiency,
        "goodput": good,
    }


def _adaptation_out(a: selectors.Adaptation) -> dict:
    e = a.effect
    d = a.decision
    predicted = (d.inputs or {}).get("predicted_gain") if d is not None else None
    return {
        "run": a.run,
        "seq": e.change.key,
        "action": e.change.action,
        "value_from": e.value_from,
        "value_to": e.value_to,
        "state": e.change.state,
        "step": e.change.step,
        "issued_by": a.issued_by,
        "decision": None
        if d is None
        else {
            "id": d.id,
            "policy": d.policy.name,
            "rule": d.rule,
            "action": (d.action or {}).get("type", ""),
            "predicted_gain": predicted if isinstance(predicted, (int, float)) else None,
        },
        "created_at": a.created_at,
        "before": _window_out(e.before, e.efficiency_before, e.goodput_before),
        "after": _window_out(e.after, e.efficiency_after, e.goodput_after),
        "gns": e.gns,
        "span_steps": e.span_steps,
        "span_s": e.span_s,
        "time_saved_s": e.time_saved_s,
        "note": e.note,
    }


class JobAdaptationListApi(APIView):
    @extend_schema(
        operation_id="job_adaptations",
        summary="What each change of the job's knobs did: throughput, efficiency and goodput "
        "before and after, and the time it saved or lost against staying put",
        description="Every set_batch_size, set_lr, scale_workers, set_strategy and set_topology "
        "of the job (a user's, a policy's, the allocator's), oldest first. See docs/adaptation.md "
        "(What adaptation did) for the windows and the estimate.",
        responses={200: JobAdaptationsOutputSerializer, **ERRORS},
        parameters=[
            OpenApiParameter(
                "run",
                int,
                description="only this run's changes (its number: 1, 2, …); default: every run's",
            ),
            OpenApiParameter(
                "window",
                int,
                description=f"points per window before and after each change, 1 to "
                f"{payoff.MAX_WINDOW} (default {payoff.DEFAULT_WINDOW})",
            ),
        ],
    )
    def get(self, request, job_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        number = int_query_param(request, "run", low=1)
        window = int_query_param(
            request, "window", default=payoff.DEFAULT_WINDOW, low=1, high=payoff.MAX_WINDOW
        )
        run = job_selectors.job_run_get(job, number) if number is not None else None
        rows = [_adaptation_out(a) for a in selectors.job_adaptations(job, run=run, window=window)]
        known = [r["time_saved_s"] for r in rows if r["time_saved_s"] is not None]
        body = {
            "base_batch": selectors.job_base_batch(job),
            "window": window,
            "time_saved_s": sum(known) if known else None,
            "adaptations": rows,
        }
        return Response(JobAdaptationsOutputSerializer(body).data)


class DecisionResolveApi(APIView):
    approve = True

    @extend_schema(
        request=None, responses={200: DecisionOutputSerializer, 409: ERRORS[400], **ERRORS}
    )
    def post(self, request, job_id: int, decision_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        decision = selectors.job_decision_get(job, decision_id=decision_id)
        decision = services.decision_resolve(
            decision=decision, approve=self.approve, user=request.user
        )
        return Response(DecisionOutputSerializer(decision).data)


class DecisionApproveApi(DecisionResolveApi):
    approve = True


class DecisionRejectApi(DecisionResolveApi):
    approve = False


class PolicyValidateApi(APIView):
    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer(
                "PolicyValid",
                {
                    "valid": serializers.BooleanField(),
                    "rules": serializers.ListField(child=serializers.CharField()),
                },
            ),
            **ERRORS,
        },
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parsed = services.policy_validate(data.validated_data["definition"])
        return Response({"valid": True, "rules": [r.name for r in parsed.rules]})


class PolicyTemplateListApi(APIView):
    @extend_schema(
        responses={
            200: inline_serializer(
                "PolicyTemplate",
                {
                    "id": serializers.CharField(),
                    "name": serializers.CharField(),
                    "description": serializers.CharField(),
                    "definition": serializers.JSONField(),
                },
                many=True,
            )
        }
    )
    def get(self, request):
        return Response(
            [
                {
                    "id": t["id"],
                    "name": t["name"],
                    "description": t["description"],
                    "definition": {k: v for k, v in t.items() if k != "id"},
                }
                for t in TEMPLATES
            ]
        )


class ReplayDecisionSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    time = serializers.FloatField(help_text="Unix seconds of the recorded step.")
    rule = serializers.CharField()
    action = serializers.JSONField(help_text='{"type": <action>, "value": <value or null>}')
    inputs = serializers.JSONField(help_text="The scalar CEL inputs the rule saw.")
    dry_run = serializers.BooleanField()


class PolicyReplayOutputSerializer(serializers.Serializer):
    policy = serializers.IntegerField(allow_null=True, help_text="null for an unsaved definition")
    version = serializers.IntegerField(allow_null=True, help_text="null for an unsaved definition")
    job = serializers.IntegerField()
    run = serializers.IntegerField(
        allow_null=True,
        help_text=(
            "the number of the job's run replayed (null: the job has no run yet, so nothing to replay)"
        ),
    )
    ticks = serializers.IntegerField(help_text="Recorded steps with whole-job metrics.")
    evaluations = serializers.IntegerField()
    decisions = ReplayDecisionSerializer(many=True)


REPLAY_RUN_HELP = (
    "the number of the job's run whose metrics to replay (1, 2, …); default: the job's "
    "current run. An unknown number is a 404 whose details.runs lists the job's runs"
)


class PolicyReplayApi(APIView):
    class InputSerializer(serializers.Serializer):
        job = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        run = serializers.IntegerField(
            min_value=1, required=False, allow_null=True, help_text=REPLAY_RUN_HELP
        )

    @extend_schema(request=InputSerializer, responses={200: PolicyReplayOutputSerializer, **ERRORS})
    def post(self, request, policy_id: int):
        policy = selectors.policy_get_for_user(user=request.user, policy_id=policy_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = job_selectors.job_get_for_user(user=request.user, job_id=data.validated_data["job"])
        run = job_selectors.job_run_get(job, data.validated_data.get("run"))
        return Response(services.policy_replay(policy=policy, job=job, run=run))


class PolicyDefinitionReplayApi(APIView):
    """Replay a definition that is not saved (the editor's draft) on a job's recorded metrics."""

    class InputSerializer(serializers.Serializer):
        definition = serializers.JSONField()
        job = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
        run = serializers.IntegerField(
            min_value=1, required=False, allow_null=True, help_text=REPLAY_RUN_HELP
        )

    @extend_schema(
        request=InputSerializer,
        responses={200: PolicyReplayOutputSerializer, **ERRORS},
        description="The definition is checked first, with the errors of /policies/validate/ (400, "
        "details.path and details.position); then the job, which must be yours (404 otherwise).",
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        parsed = services.policy_validate(data.validated_data["definition"])
        job = job_selectors.job_get_for_user(user=request.user, job_id=data.validated_data["job"])
        run = job_selectors.job_run_get(job, data.validated_data.get("run"))
        return Response(services.definition_replay(policy=parsed, job=job, run=run))


class JobPolicyApi(APIView):
    """The policy a job runs with: ``PUT {"policy": <id>}`` attaches one (yours, or any as
    staff), ``{"policy": null}`` detaches it."""

    class InputSerializer(serializers.Serializer):
        policy = serializers.IntegerField(min_value=1, max_value=2**31 - 1, allow_null=True)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: inline_serializer(
                "JobPolicy",
                {
                    "job": serializers.IntegerField(),
                    "policy": serializers.IntegerField(allow_null=True),
                    "policy_version": serializers.IntegerField(allow_null=True),
                },
            ),
            **ERRORS,
        },
    )
    def put(self, request, job_id: int):
        job = job_selectors.job_get_for_user(user=request.user, job_id=job_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        wanted = data.validated_data["policy"]
        policy = (
            None
            if wanted is None
            else selectors.policy_get_for_user(user=request.user, policy_id=wanted)
        )
        job = services.job_policy_set(job=job, policy=policy, user=request.user)
        return Response(
            {"job": job.id, "policy": job.policy_id, "policy_version": job.policy_version}
        )
