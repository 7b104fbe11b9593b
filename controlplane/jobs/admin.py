from django.contrib import admin

from controlplane.jobs.models import Command, Event, Job, JoinToken, Node, Run, Worker


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "status",
        "batch_size",
        "workers_current",
        "last_step",
        "created_at",
    )
    list_filter = ("status",)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "job",
        "number",
        "status",
        "created_by",
        "resumed_from",
        "started_at",
        "finished_at",
    )
    list_filter = ("status",)


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "address",
        "slots",
        "status",
        "draining",
        "agent_version",
        "last_heartbeat",
        "deleted_at",
    )
    list_filter = ("status", "draining")
    exclude = ("credential_hash",)


@admin.register(JoinToken)
class JoinTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "label", "created_by", "expires_at", "uses_left", "revoked_at")
    exclude = ("token_hash",)


admin.site.register(Worker)
admin.site.register(Command)
admin.site.register(Event)
