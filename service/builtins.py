"""Names of the built-in models (sensitivity.models.BUILTIN_MODELS), kept here
because the service may not import the registry (it pulls in torch); a test
holds the two lists equal."""

BUILTIN_MODELS: tuple[str, ...] = ("digits-cnn", "digits-vit", "minilm")
