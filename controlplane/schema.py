"""How the OpenAPI schema is generated: operation and component names, and the two auth
schemes (the error shape the endpoints share is in :mod:`controlplane.api`).

drf-spectacular discovers the authentication extensions below when this module is
imported (the URL conf does), so the schema documents ``Token`` and ``Node`` auth.
"""

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.accounts.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>`; create tokens at /api/v1/tokens/.",
        }


class NodeCredentialScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.jobs.auth.NodeCredentialAuthentication"
    name = "nodeCredential"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Node <credential>`, obtained by an agent at enrolment.",
        }


class AutoSchema(openapi.AutoSchema):
    """Names taken from the API classes: ``JobListCreateApi`` → operation
    ``JobListCreate_post`` and request component ``JobListCreateInput`` (every API nests
    its own ``InputSerializer``, which would otherwise collide)."""

    def _view_name(self) -> str:
        name = type(self.view).__name__
        return name[:-3] if name.endswith("Api") else name

    def get_operation_id(self):
        return f"{self._view_name()}_{self.method.lower()}"

    def _get_serializer_name(self, serializer, direction, bypass_extensions=False):
        name = super()._get_serializer_name(serializer, direction, bypass_extensions)
        base = type(serializer).__name__
        if base in ("InputSerializer", "CreatedSerializer"):
            suffix = "Input" if base == "InputSerializer" else "Created"
            return f"{self._view_name()}{suffix}"
        return name
