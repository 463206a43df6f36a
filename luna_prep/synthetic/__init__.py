"""LUNA16-shaped synthetic scans with nodules of known size at known world coordinates."""
