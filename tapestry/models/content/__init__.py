"""Item content encoders (issue 19): item text, categories and numbers -> vectors that graph models add to their
item ID embeddings, so an item without events still gets a vector (tapestry.training.lightgcn_content)."""
