"""Training the default model, apart from the engine: the procedural video world and the training loop."""
