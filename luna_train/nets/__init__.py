"""Networks and losses (MONAI)."""
