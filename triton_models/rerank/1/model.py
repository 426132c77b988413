"""Thin Triton adapter; the logic is tapestry.serving.rerank.Rerank (unit-tested without Triton)."""
from tapestry.serving.rerank import Rerank
from tapestry.serving.triton_adapter import triton_model

TritonPythonModel = triton_model(Rerank)
