"""README's "Input data" section against the schema it documents (tapestry/etl/schema.py, ETLConfig): every column
the ETL accepts, every default event type and every quarantine reason is named there, and the column table names
no column the schema lacks."""
import re
from pathlib import Path

from tapestry.config import DEFAULT_EVENT_TYPES, ETLConfig
from tapestry.etl import schema as S

README = Path(__file__).resolve().parents[2] / "README.md"


def _input_data_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Input data\n")
    return text[start:text.index("\n### ", start + 1)]


def _code_names(text: str) -> set[str]:
    """The names written as `code`, split at commas (`user_id, item_id` names two)."""
    return {part.strip() for span in re.findall(r"`([^`]+)`", text) for part in span.split(",")}


def test_every_column_event_type_and_reason_is_documented():
    names = _code_names(_input_data_section())
    expected = {
        "event column": S.EVENT_COLUMNS, "optional event column": S.OPTIONAL_EVENT_COLUMNS,
        "default event type": DEFAULT_EVENT_TYPES, "item text column": S.ITEM_TEXT_COLUMNS,
        "quarantine reason": S.REASONS,
        "ETLConfig option": tuple(f"ETLConfig.{f}" for f in ("event_types", "context_columns", "context_values")),
    }
    missing = {what: [n for n in want if n not in names] for what, want in expected.items()}
    assert not any(missing.values()), f"README's Input data section does not name: {missing}"
    assert all(hasattr(ETLConfig(), f) for f in ("event_types", "context_columns", "context_values"))


def test_the_column_table_names_only_schema_columns():
    rows = [line for line in _input_data_section().splitlines() if line.startswith("| `")]
    documented = {n for row in rows for n in _code_names(row.split("|")[1])}
    assert documented, "the column table is gone"
    schema_columns = {*S.EVENT_COLUMNS, *S.OPTIONAL_EVENT_COLUMNS}
    assert documented <= schema_columns, f"documented but not in the schema: {documented - schema_columns}"
    assert schema_columns <= documented, f"in the schema but not in the table: {schema_columns - documented}"
