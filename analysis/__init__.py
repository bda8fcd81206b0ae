"""Command-line entry points that turn a study's MLflow runs into tables and plots."""
