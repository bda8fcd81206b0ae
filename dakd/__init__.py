"""dakd."""
