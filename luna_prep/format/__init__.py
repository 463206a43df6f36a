"""The luna-patches format: the contract (spec), shard layout, writer, reader and where a store lives."""
