"""The CLI entry point, configuration and (later) the supervisor process tree."""
