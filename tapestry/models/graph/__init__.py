"""Graph encoders: LightGCN (transductive), GraphSAGE/PinSage (inductive), HGT (typed, temporal)."""
