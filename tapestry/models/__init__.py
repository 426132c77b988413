"""nn.Modules only, grouped by family (graph/, sequential/, session/, retrieval/, ranking/): plain constructor
arguments, no loops, no I/O.

Training loops and the fit/score/save wrappers live in tapestry.training; see tapestry.training.registry.
"""
