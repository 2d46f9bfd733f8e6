"""kubernetes-validate's strict check, with each schema's validator built once.

``kubernetes_validate.validate`` builds a new schema registry for every object (~30 ms); the
golden renders of the three example fleets, four device backends and two Kubernetes versions
are ~3,000 objects. This does what it does (same schema files, same Draft 2020-12 validator,
same strict folder) and keeps the validator; ``test_devices_render.py`` checks that both agree.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource


@cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator:
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version)) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any], version: str) -> None:
    """Raise kubernetes_validate.ValidationError where ``kubernetes-validate --strict`` would."""
    try:
        _validator(version, obj["kind"], obj["apiVersion"]).validate(obj)
    except jsonschema.ValidationError as e:
        raise kubernetes_validate.ValidationError(e, version=version[: version.rindex(".")]) from None
