"""tapestry: event logs -> heterogeneous temporal graph -> GNN + SASRec -> FAISS -> rerank, served by Triton."""

__version__ = "0.1.0"
