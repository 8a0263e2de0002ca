"""Image generation: prompts, the pipeline run, PNG parameters, grids."""
