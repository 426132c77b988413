"""Thin Triton adapter; the logic is tapestry.serving.feature_lookup.FeatureLookup (unit-tested without Triton)."""
from tapestry.serving.feature_lookup import FeatureLookup
from tapestry.serving.triton_adapter import triton_model

TritonPythonModel = triton_model(FeatureLookup)
