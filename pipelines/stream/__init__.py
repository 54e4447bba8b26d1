"""The streaming pipeline: transaction and label events through Redis Streams to fresh online features."""
