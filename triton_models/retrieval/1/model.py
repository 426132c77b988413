"""Thin Triton adapter; the logic is tapestry.serving.retrieval.Retrieval (unit-tested without Triton)."""
from tapestry.serving.retrieval import Retrieval
from tapestry.serving.triton_adapter import triton_model

TritonPythonModel = triton_model(Retrieval)
