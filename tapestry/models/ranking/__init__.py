"""Rankers over a retriever's candidates (DLRM on TorchRec embedding tables)."""
