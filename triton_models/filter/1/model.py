"""Thin Triton adapter; the logic is tapestry.serving.filtering.CandidateFilter (unit-tested without Triton)."""
from tapestry.serving.filtering import CandidateFilter
from tapestry.serving.triton_adapter import triton_model

TritonPythonModel = triton_model(CandidateFilter)
