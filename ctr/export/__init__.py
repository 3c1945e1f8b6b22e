"""Train → serve bridge: turn a DCP checkpoint into a self-describing serving bundle."""
