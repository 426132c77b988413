"""Session encoders: anonymous click sequences (no user id) -> one vector in an item table's space (SR-GNN)."""
