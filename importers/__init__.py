"""Importers: publish works and author records to publications.ingested."""
