"""ETL: raw tenant tables -> validated, encoded, leave-one-out split Parquet under a versioned artifact dir."""
from tapestry.etl.pipeline import ETLResult, run_etl
from tapestry.etl.sources import RawTables

__all__ = ["ETLResult", "RawTables", "run_etl"]
