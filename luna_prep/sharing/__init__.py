"""Sharing a built store: dataset cards, verification, packing into one file."""
