"""Dataset sources (prepare-data), prepared-dataset manifests and training loaders."""
