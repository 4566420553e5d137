"""The `tandem` subcommands, one module each: its arguments, its typed options, its run."""
