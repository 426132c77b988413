"""Sequential user encoders over item histories (SASRec and its graph-fused variant)."""
