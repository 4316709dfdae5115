"""Using trained models: `MVQPipeline` (sample, complete, decode; `pipeline`), the output folder of `mvq sample`
(`sample_output`) and encoding a dataset into a token store (`tokenizing`)."""
