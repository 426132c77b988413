"""Thin Triton adapter; the logic is tapestry.serving.user_encoder.UserEncoder (unit-tested without Triton)."""
from tapestry.serving.user_encoder import UserEncoder
from tapestry.serving.triton_adapter import triton_model

TritonPythonModel = triton_model(UserEncoder)
