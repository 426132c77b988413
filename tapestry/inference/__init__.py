"""What the server runs, and nothing of how it was trained.

Training writes the artifacts of three kinds of servable; the Triton stages (tapestry/serving/) load them through
this package and import no `tapestry.training` module (tests/serving/test_no_training_in_serving.py checks it in a
fresh interpreter):

  encoders.py          user / session encoders: an nn.Module under tapestry.models with `encode` and
                       `item_embeddings`, saved as class path + constructor args + weights
  feature_reranker.py  the linear listwise reranker over retrieval, popularity, content and demographic features
  dlrm_ranker.py       the DLRM over TorchRec-layout tables, scored through a plain-torch bag module
  fusion_ranker.py     the fusion-transformer reranker (each candidate attends to the recent history)
  rerankers.py         the reranker protocol and the registry keyed by the export manifest's "reranker" name
  padding.py           request-time helpers shared by training and serving (left padding, trimming)
"""
