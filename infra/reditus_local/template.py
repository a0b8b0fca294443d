"""Read template.yaml (AWS SAM / CloudFormation YAML) into plain Python data.

CloudFormation's short-form intrinsics (``!Ref``, ``!GetAtt``, ``!Sub``, ``!If`` ...) become their
long JSON form: ``!Ref X`` -> ``{"Ref": "X"}``, ``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``,
``!Sub s`` -> ``{"Fn::Sub": "s"}``, ``!Condition C`` -> ``{"Condition": "C"}``. Only PyYAML is
needed (no cfn-lint at run time): the tests and the local stack read the template through here.

Like CloudFormation, dates stay strings (``AWSTemplateFormatVersion: 2010-09-09`` is not a date) and
a key that appears twice in one mapping is an error rather than "last one wins".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["TemplateError", "load_template", "loads_template"]

# Short-form tags whose long form is "Fn::<Name>".
_FN_TAGS = (
    "And",
    "Base64",
    "Cidr",
    "Equals",
    "FindInMap",
    "ForEach",
    "GetAZs",
    "If",
    "ImportValue",
    "Join",
    "Length",
    "Not",
    "Or",
    "Select",
    "Split",
    "Sub",
    "ToJsonString",
    "Transform",
)


class TemplateError(ValueError):
    """The template is not valid YAML or uses a tag this loader does not know."""


class _TemplateLoader(yaml.SafeLoader):
    """SafeLoader with CloudFormation tags, no timestamps and no duplicate keys."""


# Drop the implicit timestamp resolver (copy the table first: it is shared with SafeLoader).
_TemplateLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _node_value(loader: _TemplateLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise TemplateError(f"unexpected YAML node {node!r}")  # pragma: no cover


def _construct_mapping(loader: _TemplateLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise TemplateError(f"duplicate key {key!r} at line {line}")
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _construct_ref(loader: _TemplateLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Ref": _node_value(loader, node)}


def _construct_condition(loader: _TemplateLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Condition": _node_value(loader, node)}


def _construct_get_att(loader: _TemplateLoader, node: yaml.Node) -> dict[str, Any]:
    value = _node_value(loader, node)
    if isinstance(value, str):
        resource, sep, attribute = value.partition(".")
        if not sep or not resource or not attribute:
            raise TemplateError(f"!GetAtt needs Resource.Attribute, got {value!r}")
        return {"Fn::GetAtt": [resource, attribute]}
    return {"Fn::GetAtt": value}


def _fn_constructor(name: str) -> Any:
    def construct(loader: _TemplateLoader, node: yaml.Node) -> dict[str, Any]:
        return {f"Fn::{name}": _node_value(loader, node)}

    return construct


def _unknown_tag(loader: _TemplateLoader, tag_suffix: str, node: yaml.Node) -> Any:
    raise TemplateError(f"unknown tag !{tag_suffix} at line {node.start_mark.line + 1}")


_TemplateLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_TemplateLoader.add_constructor("!Ref", _construct_ref)
_TemplateLoader.add_constructor("!Condition", _construct_condition)
_TemplateLoader.add_constructor("!GetAtt", _construct_get_att)
for _name in _FN_TAGS:
    _TemplateLoader.add_constructor(f"!{_name}", _fn_constructor(_name))
_TemplateLoader.add_multi_constructor("!", _unknown_tag)


def loads_template(text: str) -> dict[str, Any]:
    """Parse template text; the top level must be a mapping."""
    try:
        data = yaml.load(text, Loader=_TemplateLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TemplateError(f"invalid template YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise TemplateError("a template must be a YAML mapping")
    return data


def load_template(path: str | Path) -> dict[str, Any]:
    """Read a CloudFormation/SAM YAML template from ``path`` into plain dicts and lists."""
    return loads_template(Path(path).read_text(encoding="utf-8"))
