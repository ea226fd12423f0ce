"""The book: tables, figures and pages rendered from the run records. Imports no torch."""
