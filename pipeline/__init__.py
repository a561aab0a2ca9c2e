"""The embedding job: options, graph assembly and the command-line entry point."""
