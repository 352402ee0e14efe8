"""Writes the JSON Schemas that scripts/check-packaging.sh validates the examples against.

Why built and not vendored: the published schemas (Azure/azure-resource-manager-schemas, KEDA's
CRDs) cannot be committed here and CI cannot download them, so they are rebuilt at check time from
registry packages generated from the same sources (README.md beside this file says which, and how
the result compares with the published schemas):

- deployment-template.json: an ARM template (the 2019-04-01 deploymentTemplate language, as
  documented), whose resources must each be one of RESOURCES below, each checked in depth against
  its Azure SDK model: the SDKs are generated from the REST API specification of that api-version,
  as the published resource schemas are.
- keda-ScaledJob.json, keda-TriggerAuthentication.json: KEDA's CRDs as cloudcoil.models.keda
  generated them (pydantic), made strict like `kubectl apply` (unknown fields are errors).

Usage: python build.py OUTDIR (in a virtualenv with the packages check-packaging.sh installs).
"""

import copy
import enum
import inspect
import json
import os
import re
import sys

import azure.mgmt.appcontainers.models as app_models
import azure.mgmt.compute.v2024_07_01.models as compute_models
from cloudcoil.models.keda import v1alpha1 as keda

# An ARM template expression: "[...]" (a leading "[[" is an escaped literal "[", not an expression).
EXPRESSION = {"type": "string", "pattern": r"^\[(?!\[)[\s\S]*\]$"}

# (resource type, api-version, SDK models module, SDK model, what the SDK's REST spec leaves out
# and Azure requires: an extension names its handler; azure-resource-manager-schemas' hand-written
# genericExtension requires the same four properties).
RESOURCES = [
    ("Microsoft.App/jobs", "2025-01-01", app_models, "Job", {}),
    (
        "Microsoft.Compute/virtualMachines/extensions",
        "2024-07-01",
        compute_models,
        "VirtualMachineExtension",
        {"properties": ["publisher", "type", "typeHandlerVersion", "settings"]},
    ),
]


def sdk_api_version(models):
    """The api-version an SDK models module was generated for."""
    if models is app_models:
        from azure.mgmt.appcontainers._configuration import ContainerAppsAPIClientConfiguration

        return ContainerAppsAPIClientConfiguration(credential=object(), subscription_id="-").api_version
    return re.fullmatch(r"azure\.mgmt\.compute\.v(\d+)_(\d+)_(\d+)\.models", models.__name__).expand(r"\1-\2-\3")


PRIMITIVES = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "long": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
    "iso-8601": {"type": "string"},
    "rfc-1123": {"type": "string"},
    "date": {"type": "string"},
    "duration": {"type": "string"},
    "bytearray": {"type": "string"},
    "base64": {"type": "string"},
}
CONSTRAINTS = {
    "maximum": "maximum",
    "minimum": "minimum",
    "maximum_ex": "exclusiveMaximum",
    "minimum_ex": "exclusiveMinimum",
    "max_length": "maxLength",
    "min_length": "minLength",
    "pattern": "pattern",
    "max_items": "maxItems",
    "min_items": "minItems",
    "unique": "uniqueItems",
    "multiple": "multipleOf",
}


def or_expression(schema):
    """What a template may put where the API takes `schema`: the value, or an expression."""
    if schema == {"type": "string"}:
        return schema
    return {"anyOf": [schema, EXPRESSION]}


class SdkSchemas:
    """JSON Schema definitions from one SDK's msrest models, named PREFIX.Model."""

    def __init__(self, models, prefix, definitions):
        self.models, self.prefix, self.definitions = models, prefix, definitions

    def ref(self, name):
        key = f"{self.prefix}.{name}"
        if key not in self.definitions:
            self.definitions[key] = None  # a placeholder while the model is built (recursion)
            self.definitions[key] = self.model(getattr(self.models, name))
        return {"$ref": f"#/definitions/{key}"}

    def of_type(self, sdk_type, enum_values):
        if sdk_type.startswith("["):
            return {"type": "array", "items": or_expression(self.of_type(sdk_type[1:-1], enum_values))}
        if sdk_type.startswith("{"):
            return {"type": "object", "additionalProperties": or_expression(self.of_type(sdk_type[1:-1], None))}
        if sdk_type in PRIMITIVES:
            schema = dict(PRIMITIVES[sdk_type])
            if enum_values:
                schema["enum"] = enum_values
            return schema
        return self.ref(sdk_type)

    def enum_values(self, cls, attr):
        """The values of the enum the model's constructor names for `attr`, if any."""
        param = inspect.signature(cls.__init__).parameters.get(attr)
        if param is None:
            return None
        for name in re.findall(r"_models\.(\w+)", str(param.annotation)):
            candidate = getattr(self.models, name, None)
            if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
                return [e.value for e in candidate]
        return None

    def model(self, cls):
        if getattr(cls, "_subtype_map", None):
            sys.exit(f"{cls.__name__} is polymorphic ({cls._subtype_map}): build.py does not handle that yet")
        root = {"type": "object", "properties": {}}
        for attr, meta in cls._attribute_map.items():
            rules = cls._validation.get(attr, {})
            if rules.get("readonly"):
                continue  # the server's, not the template's
            schema = self.of_type(meta["type"], self.enum_values(cls, attr))
            for rule, keyword in CONSTRAINTS.items():
                if rule in rules:
                    schema[keyword] = rules[rule]
            # Flattened properties ("properties.configuration") nest; "\\." is a literal dot.
            path = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", meta["key"])]
            node = root
            for part in path[:-1]:
                props = node.setdefault("properties", {})
                if part not in props:
                    props[part] = {"type": "object", "properties": {}}
                node = props[part]
            node["properties"][path[-1]] = or_expression(schema)
            if rules.get("required"):
                node.setdefault("required", []).append(path[-1])
        return root


def unwrap(schema):
    """The object schema inside or_expression's anyOf."""
    return schema["anyOf"][0] if "anyOf" in schema else schema


def deployment_template():
    """The template language (learn.microsoft.com: ARM template structure and syntax)."""
    definitions = {}
    parameter_types = ["string", "securestring", "int", "bool", "object", "secureObject", "array"]
    definitions["parameter"] = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": parameter_types},
            "defaultValue": {},
            "allowedValues": {"type": "array"},
            "metadata": {"type": "object"},
            "minValue": {"type": "integer"},
            "maxValue": {"type": "integer"},
            "minLength": {"type": "integer"},
            "maxLength": {"type": "integer"},
        },
    }
    definitions["output"] = {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": parameter_types}, "condition": or_expression({"type": "boolean"})},
    }
    # What every resource may carry besides its type's own properties.
    definitions["resourceBase"] = {
        "type": "object",
        "required": ["type", "apiVersion", "name"],
        "properties": {
            "type": {"type": "string"},
            "apiVersion": {"type": "string"},
            "name": {"type": "string"},
            "condition": or_expression({"type": "boolean"}),
            "location": {"type": "string"},
            "dependsOn": {"type": "array", "items": {"type": "string"}},
            "tags": or_expression({"type": "object"}),
            "copy": {
                "type": "object",
                "required": ["name", "count"],
                "properties": {
                    "name": {"type": "string"},
                    "count": or_expression({"type": "integer"}),
                    "mode": {"enum": ["Parallel", "Serial"]},
                    "batchSize": or_expression({"type": "integer"}),
                },
            },
            "comments": {"type": "string"},
            "scope": {"type": "string"},
        },
    }
    by_type = []
    for rtype, api_version, models, model, required_extra in RESOURCES:
        if sdk_api_version(models) != api_version:
            sys.exit(f"{models.__name__} is api-version {sdk_api_version(models)}, not {api_version}")
        sdk = SdkSchemas(models, models.__name__.split(".")[2], definitions)
        body = copy.deepcopy(definitions[sdk.ref(model)["$ref"].split("/")[-1]])
        body["properties"].update(
            {"type": {"enum": [rtype]}, "apiVersion": {"enum": [api_version]}, "name": {"type": "string"}}
        )
        body["required"] = sorted(set(body.get("required", [])) | {"type", "apiVersion", "name", "properties"})
        for prop, required in required_extra.items():
            inner = body["properties"][prop]
            inner.setdefault("required", []).extend(required)
        for prop, schema in body["properties"].items():
            if prop not in ("type", "apiVersion", "name"):
                body["properties"][prop] = or_expression(unwrap(schema))
        key = f"resource {rtype.replace('/', '.')} {api_version}"
        definitions[key] = body
        by_type.append(
            {
                "if": {"properties": {"type": {"const": rtype}}, "required": ["type"]},
                "then": {"$ref": f"#/definitions/{key}"},
            }
        )
    definitions["resource"] = {
        "allOf": [
            {"$ref": "#/definitions/resourceBase"},
            # A type no SDK here describes is an error, not a free pass.
            {"properties": {"type": {"enum": [r[0] for r in RESOURCES]}}},
            *by_type,
        ]
    }
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "ARM deployment template (2019-04-01 language) with the resource types of packaging/",
        "type": "object",
        "required": ["$schema", "contentVersion", "resources"],
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "contentVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$"},
            "apiProfile": {"type": "string"},
            "metadata": {"type": "object"},
            "parameters": {"type": "object", "additionalProperties": {"$ref": "#/definitions/parameter"}},
            "variables": {"type": "object"},
            "functions": {"type": "array"},
            "resources": {
                "oneOf": [
                    {"type": "array", "items": {"$ref": "#/definitions/resource"}},
                    {"type": "object", "additionalProperties": {"$ref": "#/definitions/resource"}},
                ]
            },
            "outputs": {"type": "object", "additionalProperties": {"$ref": "#/definitions/output"}},
        },
        "definitions": definitions,
    }


def strict(schema):
    """Unknown fields become errors, as with `kubectl apply` (its default --validate=strict)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def keda_schema(cls):
    schema = strict(cls.model_json_schema(mode="validation"))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"]["apiVersion"] = {"const": "keda.sh/v1alpha1"}
    schema["properties"]["kind"] = {"const": cls.__name__}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    schemas = {"deployment-template.json": deployment_template()}
    for cls in (keda.ScaledJob, keda.TriggerAuthentication):
        schemas[f"keda-{cls.__name__}.json"] = keda_schema(cls)
    for name, schema in schemas.items():
        with open(os.path.join(out, name), "w") as f:
            json.dump(schema, f, indent=1)
        print(f"{name}: {len(json.dumps(schema))} bytes")


if __name__ == "__main__":
    main()
