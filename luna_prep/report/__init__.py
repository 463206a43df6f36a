"""Telling people about a store: the build summary, info and preview figures."""
