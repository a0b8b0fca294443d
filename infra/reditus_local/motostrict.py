"""moto as strict as DynamoDB about empty strings in index key attributes, on every write path.

DynamoDB refuses an item whose attribute that keys a secondary index is an empty string (or empty
binary), whichever call writes it. moto 5.2.5 refuses it in PutItem, BatchWriteItem and
TransactWriteItems' Put, and in UpdateItem with a plain ``SET attr = :v``; but not when the update
names the attribute through ExpressionAttributeNames (``SET #attr = :v``), nor in
TransactWriteItems' Update written that way, nor through ``if_not_exists`` or AttributeUpdates. So
a store that writes such an item passed the tests and failed on AWS.

Here the rule is checked on what an update *leaves* in the item, whatever the expression, and an
offending update is undone; puts are checked before moto's own validation, naming the index the
attribute keys (moto names the table's first index, whichever it is). One fix, used by both the
tests' in-process ``mock_aws`` (tests/conftest.py) and the local stack's server (motoserver.py).
"""

from __future__ import annotations

import copy
from typing import Any

PUT_MESSAGE = (
    "One or more parameter values are not valid. A value specified for a secondary index key is not "
    "supported. The AttributeValue for a key attribute cannot contain an empty string value. "
    "IndexName: {index}, IndexKey: {key}"
)
UPDATE_MESSAGE = (
    "One or more parameter values are not valid. The update expression attempted to update a secondary "
    "index key to a value that is not supported. The AttributeValue for a key attribute cannot contain "
    "an empty string value. IndexName: {index}, IndexKey: {key}"
)

_patched = False


def _is_empty(value: Any) -> bool:
    """An empty S or B, given as DynamoDB JSON ({"S": ""}) or as moto's DynamoType."""
    if isinstance(value, dict):
        if len(value) != 1:
            return False
        ((kind, inner),) = value.items()
    else:
        kind, inner = getattr(value, "type", None), getattr(value, "value", None)
    return kind in ("S", "B") and inner is not None and len(inner) == 0


def empty_index_key(table: Any, attributes: dict[str, Any]) -> tuple[str, str] | None:
    """(index name, attribute) of the first secondary index the item would enter with an empty key."""
    for index in [*table.global_indexes, *table.indexes]:
        for name in index.schema_key_attrs:
            if name in attributes and _is_empty(attributes[name]):
                return str(index.name), str(name)
    return None


def use_strict_index_keys() -> None:
    """Patch this process's moto DynamoDB (idempotent). Call before the requests it should judge."""
    global _patched
    if _patched:
        return
    from moto.dynamodb import responses
    from moto.dynamodb.exceptions import MockValidationException
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.parsing import validators

    # PutItem, BatchWriteItem, TransactWriteItems' Put: moto's check, with the right index named.
    moto_put_check = responses.validate_put_has_empty_keys

    def validate_put_has_empty_keys(
        field_updates: dict[str, Any], table: Any, custom_error_msg: str | None = None
    ) -> None:
        if table is not None:
            found = empty_index_key(table, field_updates)
            if found is not None:
                raise MockValidationException(PUT_MESSAGE.format(index=found[0], key=found[1]))
        moto_put_check(field_updates, table, custom_error_msg=custom_error_msg)

    # UpdateItem (expression or AttributeUpdates) and TransactWriteItems' Update: judged on the item the
    # update leaves. moto's own partial checks (plain names only; AttributeUpdates with a message that
    # names no index) give way to this one, so every path answers alike.
    moto_update = DynamoDBBackend.update_item

    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        table = self.get_table(table_name)
        existing = self.get_item(table_name, key)
        before = None if existing is None else copy.deepcopy(existing.to_json()["Attributes"])
        item = moto_update(self, table_name, key, *args, **kwargs)
        found = empty_index_key(table, item.attrs)
        if found is not None:
            if before is None:
                self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before, overwrite=True)
            raise MockValidationException(UPDATE_MESSAGE.format(index=found[0], key=found[1]))
        return item

    def no_check(self: Any, node: Any) -> Any:
        return node

    def no_attribute_updates_check(self: Any, attribute_updates: Any, key_attributes: Any) -> None:
        return None

    responses.validate_put_has_empty_keys = validate_put_has_empty_keys
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]
    validators.EmptyStringKeyValueValidator.check_for_empty_string_key_value = no_check  # type: ignore[method-assign]
    Item.validate_no_empty_key_values = no_attribute_updates_check  # type: ignore[method-assign]
    _patched = True
