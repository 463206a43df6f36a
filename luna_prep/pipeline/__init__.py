"""Per-scan processing: prepare (read, resample, encode, lungs), sample centres, draw masks, cut patches."""
