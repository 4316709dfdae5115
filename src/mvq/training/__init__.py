"""Training: config schema, Lightning modules for both stages, callbacks and the run driver."""
