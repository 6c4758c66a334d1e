"""The `textrec` command-line interface (Typer + rich). Parses, calls the library, renders."""
