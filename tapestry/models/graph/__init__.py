"""Graph encoders: LightGCN (transductive), GraphSAGE/PinSage (inductive), relational GraphSAGE and HGT (typed)."""
