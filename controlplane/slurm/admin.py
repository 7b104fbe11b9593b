"""The admin page of Slurm allocations: the list, and a release action (scancel)."""

from django.contrib import admin, messages

from controlplane.errors import ApiError
from controlplane.slurm import services
from controlplane.slurm.models import Allocation


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "slurm_job_id",
        "status",
        "nodes",
        "partition",
        "gres",
        "time_limit",
        "created_by",
        "created_at",
        "ended_at",
    )
    list_filter = ("status", "partition")
    readonly_fields = [f.name for f in Allocation._meta.fields]
    actions = ["release"]

    def has_add_permission(self, request):
        return False  # submitted with `adaptrain slurm up` or the API, which mint its token

    @admin.action(description="Release (scancel): the nodes shrink their jobs away and leave")
    def release(self, request, queryset):
        for allocation in queryset:
            try:
                services.allocation_release(allocation_id=allocation.id)
            except ApiError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            else:
                self.message_user(request, f"Allocation {allocation.id} released.")
