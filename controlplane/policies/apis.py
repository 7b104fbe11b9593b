"""REST endpoints for adaptation policies: CRUD with versions, enable/disable, validation,
templates, replays (of a saved policy or of an unsaved definition) and approvals."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import ERRORS, int_query_param
from controlplane.jobs import selectors as job_selectors
from controlplane.policies import selectors, services
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
