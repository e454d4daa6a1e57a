"""Thin absl mains: flags -> library call (`python -m launch.<name>`)."""
