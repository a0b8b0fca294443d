"""What the template tests share beyond the IAM derivation (tests/iam_derivation.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest


def sam_translate(template: dict[str, Any]) -> dict[str, Any]:
    """The template as CloudFormation expands it, after `sam package` replaced every CodeUri."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    sam = json.loads(json.dumps(template))
    for resource in sam["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://example-bucket/reditus-refunds.zip"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        result: dict[str, Any] = transform(sam, {}, NoManagedPolicies())
    return result
