"""Export: trained artifacts -> FAISS index + a complete, tenant-scoped Triton model repository."""
from tapestry.ensembles.export import ExportResult, run_export

__all__ = ["ExportResult", "run_export"]
