"""Command-line interface: `xcodec-stream <subcommand>`."""
