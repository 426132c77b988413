"""The generic event schema and the quarantine reasons, in one place."""
from __future__ import annotations

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("weight", "session_id", "split")

# Quarantine reasons, checked in this order (a row gets the first one that applies).
MALFORMED_LINE = "malformed_line"              # a native file line with the wrong number of fields
MISSING_USER_ID = "missing_user_id"
MISSING_ITEM_ID = "missing_item_id"
MISSING_TIMESTAMP = "missing_timestamp"
BAD_TIMESTAMP = "bad_timestamp"                # not an integer and not an ISO-8601 date-time
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
UNKNOWN_EVENT_TYPE = "unknown_event_type"      # missing, or not in the tenant's vocabulary
BAD_WEIGHT = "bad_weight"                      # present but not a finite number
BAD_SPLIT = "bad_split"                        # a `split` column is present and this row's is not a SPLIT_VALUES one
MISSING_ENTITY_ID = "missing_entity_id"        # an item/user table row without its id

REASONS = (
    MALFORMED_LINE, MISSING_USER_ID, MISSING_ITEM_ID, MISSING_TIMESTAMP, BAD_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE, UNKNOWN_EVENT_TYPE, BAD_WEIGHT, BAD_SPLIT, MISSING_ENTITY_ID,
)

# Optional event column: when an input carries it, its rows keep the given train/valid/test split instead of the
# leave-one-out one (published protocols such as the LightGCN Gowalla split come with their own).
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "valid", "test")

# Item-table columns that are never entity types (display text, free text).
ITEM_TEXT_COLUMNS = ("title", "name", "description", "text")
ENTITY_VALUE_SEPARATOR = "|"


class SchemaError(ValueError):
    """A whole input is unusable (a required column is missing): nothing is written."""
