"""The tiny `recommend` model config both server test files serve (the ensemble's tensor contract)."""

TOY_RECOMMEND_CONFIG = """
name: "recommend"
backend: "python"
max_batch_size: 0
input [
  { name: "TENANT" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "USER_ID" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "K" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "EXCLUDE_ITEM_IDS" data_type: TYPE_STRING dims: [ -1 ] }
]
output [
  { name: "ITEM_IDS" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "SCORES" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "TITLES" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "STRATEGY" data_type: TYPE_STRING dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""
