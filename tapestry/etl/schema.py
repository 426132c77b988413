"""The generic event schema and the quarantine reasons, in one place."""
from __future__ import annotations

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("weight", "session_id", "split", "query", "dwell", "price")
# Optional columns kept through the ETL when the input has them (issue 19): the typed graph reads them.
QUERY_COLUMN = "query"                         # free text that led to the event: becomes a query node
EDGE_VALUE_COLUMNS = ("dwell", "price")        # numbers >= 0 (dwell in seconds), kept as edge features
# A tenant may also declare CONTEXT columns (ETLConfig.context_columns: device, location, campaign, ...): each
# becomes a node type whose values link the events that carry them. Their names may not be one of these (node
# types of the typed graph, or columns of the event schema).
RESERVED_NODE_TYPES = ("user", "item", "session", "query", "event")

# Quarantine reasons, checked in this order (a row gets the first one that applies).
MALFORMED_LINE = "malformed_line"              # a native file line with the wrong number of fields
MISSING_USER_ID = "missing_user_id"               # empty, or no such field (a blank line is a row without one)
BAD_USER_ID = "bad_user_id"                       # fails the id policy below
MISSING_ITEM_ID = "missing_item_id"
BAD_ITEM_ID = "bad_item_id"
MISSING_TIMESTAMP = "missing_timestamp"
BAD_TIMESTAMP = "bad_timestamp"                # not an integer and not an ISO-8601 date-time
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
UNKNOWN_EVENT_TYPE = "unknown_event_type"      # missing, or not in the tenant's vocabulary
BAD_WEIGHT = "bad_weight"                      # present but not a finite number
NONPOSITIVE_WEIGHT = "nonpositive_weight"      # a number <= 0 (as f32): an interaction has a positive strength
BAD_SESSION_ID = "bad_session_id"              # present and fails the id policy below
BAD_SPLIT = "bad_split"                        # a `split` column is present and this row's is not a SPLIT_VALUES one
BAD_QUERY = "bad_query"                        # a control/invisible character or U+FFFD, or over MAX_QUERY_LENGTH
BAD_DWELL = "bad_dwell"                        # present and not a finite number >= 0
BAD_PRICE = "bad_price"                        # present and not a finite number >= 0
BAD_CONTEXT_VALUE = "bad_context_value"        # a declared context column's value fails the id policy below
UNKNOWN_CONTEXT_VALUE = "unknown_context_value"   # not in the tenant's declared values for that context column
UNKNOWN_LINKED_USER = "unknown_linked_user"    # a user-table link (e.g. a friend) naming no user of the events
MISSING_ENTITY_ID = "missing_entity_id"        # an item/user table row without its id
BAD_ENTITY_ID = "bad_entity_id"                # an item/user table id that fails the id policy below
BAD_CONTENT_VALUE = "bad_content_value"        # a declared numeric item content column's value is not a number

REASONS = (
    MALFORMED_LINE, MISSING_USER_ID, BAD_USER_ID, MISSING_ITEM_ID, BAD_ITEM_ID, MISSING_TIMESTAMP, BAD_TIMESTAMP,
    TIMESTAMP_OUT_OF_RANGE, UNKNOWN_EVENT_TYPE, BAD_WEIGHT, NONPOSITIVE_WEIGHT, BAD_SESSION_ID, BAD_SPLIT,
    BAD_QUERY, BAD_DWELL, BAD_PRICE, BAD_CONTEXT_VALUE, UNKNOWN_CONTEXT_VALUE,
    MISSING_ENTITY_ID, BAD_ENTITY_ID, UNKNOWN_LINKED_USER, BAD_CONTENT_VALUE,
)
# Reasons that exist only for inputs carrying the optional columns above (or a declared user-link column).
OPTIONAL_COLUMN_REASONS = (BAD_QUERY, BAD_DWELL, BAD_PRICE, BAD_CONTEXT_VALUE, UNKNOWN_CONTEXT_VALUE,
                           UNKNOWN_LINKED_USER, BAD_CONTENT_VALUE)

# The id policy (user, item, session and entity-table ids), after stripping surrounding whitespace. An id is
# quarantined, never rewritten, because a rewritten id would no longer match what the tenant's clients send:
# - a control or invisible format character (C0/C1 controls, zero-width and bidi marks), a line/paragraph
#   separator, or U+FFFD (bytes that did not decode in the declared encoding): such ids look equal and are not;
# - longer than MAX_ID_LENGTH characters (the limit common recommender services use; a longer "id" is a
#   mis-split line or a pasted document);
# - a leading `=`, `+`, `-` or `@`, which spreadsheet tools run as a formula when the id is exported and opened
#   (CSV/formula injection), unless the whole id is a plain number such as `-1` or `+44`.
MAX_ID_LENGTH = 256
BAD_ID_PATTERN = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\x{FFFD}]|^[=+\-@]"     # ... unless PLAIN_NUMBER_PATTERN matches
PLAIN_NUMBER_PATTERN = r"^[+-]?[0-9]+(?:\.[0-9]+)?$"
# The same rule as one regex (half the time of the two above; tests check they agree): after a sign, anything
# but digits with at most one inner dot.
ID_POLICY_PATTERN = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\x{FFFD}]|^[=@]|^[+-](?:$|\.|.*[^0-9.]|.*\.$|.*\..*\.)"

# Query text is free text (spaces, punctuation, a leading `-`), not an id: only invisible/control characters,
# U+FFFD and length are checked. The typed graph merges queries case-insensitively (tapestry/graph/typed.py).
MAX_QUERY_LENGTH = 1024
BAD_TEXT_PATTERN = r"[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\x{FFFD}]"

# Optional event column: when an input carries it, its rows keep the given train/valid/test split instead of the
# leave-one-out one (published protocols such as the LightGCN Gowalla split come with their own).
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "valid", "test")

# Item-table columns that are never entity types (display text, free text).
ITEM_TEXT_COLUMNS = ("title", "name", "description", "text")
ENTITY_VALUE_SEPARATOR = "|"


class SchemaError(ValueError):
    """A whole input is unusable (a required column is missing): nothing is written."""
