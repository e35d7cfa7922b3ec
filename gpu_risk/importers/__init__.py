"""Importers of real order-book formats into book stores (one module per format)."""
