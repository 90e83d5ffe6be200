"""Flows: the verbs that compose the pipeline's steps (search-and-register, cross-validation, ensemble, ...).

A flow sits above `medxp.pipeline` (one run's stages) and `medxp.search` (many runs); it
only sequences their steps. Nothing below a flow imports a flow; `medxp.cli` calls them
(and the pipeline and search directly for `train`, `evaluate`, `search`).
"""
