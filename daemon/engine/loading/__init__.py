"""Models: which names are servable, loading, GPU fit, file identity, chat templates."""
